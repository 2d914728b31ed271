"""Evaluation: per-case, per-class metrics (Dice, IoU, HD95, ASD, volumes) of predicted label
maps against references, their summaries (per class, per site, worst/best cases) and files.

``metrics.evaluate_arrays`` scores one case held in memory; ``evaluate.evaluate_folders``
scores a folder of files; ``writing.write_evaluation`` writes metrics.csv, summary.json and
summary.md; ``validation`` predicts a trained fold's cached validation cases and scores them
(the final validation that ``run.train.train_fold`` ends with).
"""
