"""The raw dataset: its format (nnU-Net v2's), image readers/writers, importers, verification."""
