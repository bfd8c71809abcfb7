"""`python -m skyloom.eval.lm_eval_tasks` prints the task folder, for `lm_eval --include_path "$(…)"`."""

from skyloom.eval.lm_eval_tasks import tasks_dir

print(tasks_dir())
