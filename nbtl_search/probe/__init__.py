"""`nbtl-search probe`: how well the pre-trained weights fit the target (`measure`: one forward
pass and the transferability scores), the documented rule from scores to settings and reading a
stored suggestion back (`rule`), and a study file that starts from it (`warm_study`)."""
