"""Stage 3: rewrites of a model, each a function model -> (model, report): normalisation, SRN, channel surgery."""
