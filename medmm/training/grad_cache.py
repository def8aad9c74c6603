"""Gradient caching for contrastive losses (GradCache; Gao, Zhang, Han & Callan,
"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", RepL4NLP 2021).

A contrastive loss couples every sample of the batch, so its batch cannot simply be split
into accumulated micro-batches. GradCache splits the *encoder* work instead:

1. encode the batch chunk by chunk without a graph, keeping only the embeddings;
2. compute the loss on all embeddings with a graph and back-propagate to the embeddings
   (and the loss's own parameters, e.g. the temperature): the "gradient cache";
3. encode each chunk again with a graph and back-propagate ``<embeddings, cached grad>``,
   which accumulates exactly the parameter gradients of the full-batch loss.

Peak activation memory is that of one chunk; the cost is a second forward pass. Each
chunk's RNG state is saved in step 1 and restored in step 3 so dropout and other random
layers draw the same masks twice. Layers that normalise over the batch (BatchNorm) see
chunks, so the model trained is the chunked one (the check against the uncached
computation uses the same chunking).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["split_batch", "grad_cache_backward"]


def split_batch(batch: dict, chunk_size: int) -> list[dict]:
    """Split a collated batch (tensors and nested dicts of tensors along dim 0) into chunks."""
    n = len(batch["index"]) if "index" in batch else next(v for v in batch.values() if torch.is_tensor(v)).shape[0]

    def take(value, sl):
        if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == n:
            return value[sl]
        if isinstance(value, dict):
            return {k: take(v, sl) for k, v in value.items()}
        return value

    return [{k: take(v, slice(s, s + chunk_size)) for k, v in batch.items()} for s in range(0, n, chunk_size)]


class _RngState:
    """CPU and (if used) CUDA RNG states, to replay a chunk's random draws."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def grad_cache_backward(encode: Callable[[dict], dict[str, Tensor]], chunks: list[dict],
                        loss_fn: Callable[[dict[str, Tensor]], Tensor],
                        backward: Callable[[Tensor], None] = Tensor.backward) -> Tensor:
    """Accumulate into the parameters' ``.grad`` the gradients of
    ``loss_fn(concatenated embeddings of all chunks)`` and return the (detached) loss.

    ``encode(chunk) -> {modality: [n_chunk, d]}``; ``backward`` lets a trainer substitute
    its own (e.g. Lightning's ``manual_backward``)."""
    states, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RngState())
            cached.append(encode(chunk))
    modalities = list(cached[0])
    full = {m: torch.cat([c[m] for c in cached]).detach().requires_grad_(True) for m in modalities}
    loss = loss_fn(full)
    backward(loss)
    start = 0
    for chunk, state in zip(chunks, states):
        with state.replay():
            out = encode(chunk)
        n = out[modalities[0]].shape[0]
        surrogate = sum((out[m] * full[m].grad[start : start + n]).sum() for m in modalities)
        backward(surrogate)
        start += n
    return loss.detach()
