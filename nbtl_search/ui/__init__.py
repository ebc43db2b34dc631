"""What a user reads: the `status` table, the `best` config as a study file, the probe's
`probe_table`, the optimal-vs-default note on the optuna-dashboard page (`dashboard_note`) and the
offline `demo`."""
