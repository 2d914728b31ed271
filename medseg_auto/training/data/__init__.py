"""The training data pipeline: cross-validation splits, patch sampling, augmentation, batch loaders.

Data flow: :mod:`.splits` picks the cases of a fold; :mod:`.patch_sampler` cuts enlarged
patches from the memory-mapped preprocessed cache; :mod:`.augmentation` turns them into
network-sized patches (nnU-Net v2.4.2's batchgenerators recipe); :mod:`.loader` runs both in
background workers and yields torch batches. :mod:`.case_samplers` decides which cases a batch
draws from, so domain trainers can balance sites without touching the rest.
"""
