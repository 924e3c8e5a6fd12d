"""Model sizes the model tests share."""

# A GPT-2 small enough for exact comparisons in a fraction of a second.
TINY = dict(
    vocabulary_size=97,
    num_layers=2,
    num_heads=4,
    hidden_dim=32,
    intermediate_dim=64,
    max_sequence_length=64,
)
