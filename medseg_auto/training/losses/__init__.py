"""Loss functions of the domain methods, as plain functions on tensors (no trainer state), so
they are tested on hand-made tensors and shared by the trainers in
:mod:`medseg_auto.training.trainers`. The segmentation loss itself is :mod:`..loss`."""
