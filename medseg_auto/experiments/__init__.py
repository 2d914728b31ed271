"""Multi-site experiments built from many training runs ("cells") on explicit case splits.

- :mod:`.splits`: the experiment's fixed splits (test, validation, nested novel subsets,
  held-out sites), written once to ``splits.json`` in the experiment folder;
- :mod:`.cells`: one cell = train (``train_fold(TrainRequest(split=...))``), predict the test
  cases, score, write a done marker; resumable;
- :mod:`.data_addition`: the data-addition dilemma (feature-discrepancy paper, Figure 3);
- :mod:`.leave_one_site_out`: train on all sites but one, test on that one;
- :mod:`.tables`: results tables (CSV + Markdown) and the Dice-against-fraction plot.

Model selection (the validation loss, ``checkpoint_best``, the final validation) only ever sees
the validation cases of a cell; test cases are never in a cell's training or validation list.
"""
