"""One module per stage: typed config in, typed artifacts out."""
