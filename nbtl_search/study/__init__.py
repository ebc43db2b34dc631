"""What a study is, before anything runs: the study file parsed and checked (`spec`, with its
`sections`, search `axes`, `default_settings`, `checks`), the Optuna side of it (`sampling`:
samplers, pruners, distributions, trial -> TrainConfig), the two studies behind one file (`roles`:
the search and the default-settings baseline) and the notes on a best that sits on an `edges` of
what was tried. Nothing here opens a database or starts a process."""
