"""Running trials: what must happen once across workers, decided under the study lock
(`trial_queue`), the one place that turns trainer outcomes into trial states (`objective`), one
worker process per GPU slot (`worker`), the supervisor that starts and restarts them (`launcher`),
the process helpers they share (`processes`), stopping on signals (`signals`) and the checks that
run before anything is written (`preflight`)."""
