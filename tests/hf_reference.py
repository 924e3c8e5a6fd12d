"""Random Hugging Face Transformers GPT-2 models to compare against."""

import numpy as np


def random_transformers_gpt2(
    vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=None, seed=0
):
    """A `transformers.GPT2LMHeadModel` in eval mode with random weights.

    Biases and LayerNorm parameters are randomized too (Transformers
    initializes them to 0 and 1, which would hide mapping mistakes).
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=n_inner,
    )
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def transformers_tensors(model):
    """The model's weights as `{name: float32 ndarray}`."""
    return {
        name: tensor.detach().cpu().numpy()
        for name, tensor in model.state_dict().items()
    }


def transformers_hidden_states(model, token_ids, attention_mask=None, position_ids=None):
    """`GPT2Model` last hidden state (after `ln_f`) as float32 NumPy."""
    import torch

    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    if position_ids is not None:
        kwargs["position_ids"] = torch.tensor(np.asarray(position_ids), dtype=torch.long)
    with torch.no_grad():
        out = model.transformer(torch.tensor(np.asarray(token_ids), dtype=torch.long), **kwargs)
    return out.last_hidden_state.numpy()
