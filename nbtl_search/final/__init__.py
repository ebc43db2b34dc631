"""`nbtl-search final`: which configs are retrained (`selection`: re-ranking on validation and the
ladder between the best default and the optimum) and the retraining on train+val with the test
evaluation (`retrain`) — the only place the test split is touched."""
