"""How many worst-off samples ``compare`` looks at: the feature-discrepancy paper's Table 4.

Kept apart from :mod:`.compare` (pandas, scipy) so the command-line parser can offer the
choices without importing either.
"""

#: Table 4 of the paper: dataset -> (worst-off samples, all test samples).
PAPER_WORST_OFF = {"TNBC": (10, 50), "MoNuSeg": (25, 44), "UDIAT": (35, 163), "US-TNBC": (10, 15), "AD": (500, 10000)}
DEFAULT_PROPORTION_OF = "UDIAT"
