"""Names of the user attributes nbtl-search keeps on Optuna studies and trials (shown by
optuna-dashboard, read by `status` and by the queue)."""

# study
FINGERPRINT = "nbtl_fingerprint"  # what the study's results depend on (see StudySpec.fingerprint)
STUDY = "nbtl_study"  # the study file's name (the baseline study is NAME.default)
ROLE = "nbtl_role"
# trial
WORKER = "nbtl_worker"  # host:pid of the worker running it
SLURM_JOB = "nbtl_slurm_job"  # the Slurm job it ran in (`1234_5`: task 5 of array 1234)
RUN_ID = "nbtl_run_id"  # its row in nbtl_runs
FAIL_REASON = "fail_reason"  # one line; optuna-dashboard shows it
LOST = "nbtl_lost"  # its worker died or was stopped: re-queued, whatever the role
POINT = "nbtl_point"  # a grid point's key (every trial of a grid, retries included)
RETRY_OF = "nbtl_retry_of"  # the number of the failed trial this one repeats
ATTEMPT = "nbtl_attempt"  # 1 for a first try, 2 for its first retry, ...
EXTENSION = "nbtl_extension"  # a baseline point added past the edge of the lr grid
WARM_START = "nbtl_warm_start"  # a first trial enqueued from the probe ("probe suggestion", ...)
