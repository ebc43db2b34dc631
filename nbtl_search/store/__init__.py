"""Where a study's results live: the one storage URL opened safely from many processes
(`connection`), nbtl's tables beside Optuna's (`schema`), the store that writes and reads them
(`results`), the study lock held through that storage (`lock`) and the names of the user
attributes kept on Optuna's studies and trials (`attrs`). Knows no study file."""
