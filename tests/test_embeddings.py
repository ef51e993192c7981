"""Embeddings captured from an unmodified model, and labelled-set outputs for strategies that need them."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier

import lightning_al as al
from lightning_al.estimators import Softmax
from lightning_al.strategies import ScoreStrategy

NEEDS = frozenset({"probs", "embeddings"})


def test_default_embedding_is_the_input_of_the_last_linear_layer():
    model = TinyClassifier().eval()
    x = torch.randn(5, 4)
    out = Softmax().predict(model, x, NEEDS)
    expected = model.net[:3](x)  # Linear -> ReLU -> Dropout (eval): what the head sees
    assert torch.allclose(out["embeddings"], expected)
    assert torch.allclose(out["probs"], torch.softmax(model(x), dim=-1))
    assert not model.net[3]._forward_pre_hooks  # the hook is removed


def test_named_layer_output_and_a_clear_error_for_a_wrong_name():
    model = TinyClassifier()
    x = torch.randn(3, 4)
    out = Softmax(embedding_layer="net.0").predict(model, x, NEEDS)
    assert torch.allclose(out["embeddings"], model.net[0](x))
    with pytest.raises(
        ValueError, match=r"`embedding_layer` to name a layer of TinyClassifier, one of \['net', 'net.0'"
    ):
        Softmax(embedding_layer="backbone.fc").predict(model, x, NEEDS)


def test_an_embed_method_is_used_when_present():
    class WithEmbed(TinyClassifier):
        def embed(self, x):
            return x * 2

    x = torch.randn(3, 4)
    assert torch.equal(Softmax().predict(WithEmbed(), x, NEEDS)["embeddings"], x * 2)


def test_embeddings_are_only_computed_when_needed():
    out = Softmax().predict(TinyClassifier(), torch.randn(3, 4), frozenset({"probs"}))
    assert set(out) == {"probs"}


def test_strategies_receive_labelled_outputs_when_they_ask(tiny_data):
    seen = {}

    class NearestToLabelled(ScoreStrategy):
        requires = frozenset({"embeddings"})
        requires_labelled = frozenset({"embeddings"})

        def score(self, outputs):
            seen["pool"], seen["labelled"] = outputs, outputs.labelled
            return -torch.cdist(outputs["embeddings"], outputs.labelled["embeddings"]).min(dim=1).values

    dm = al.ActiveDataModule(tiny_data[0], initial_labelled=10, batch_size=8)
    labelled_before = dm.labelled_ids.clone()
    al.ActiveLearningLoop(NearestToLabelled(), query_size=3, rounds=1, trainer_kwargs=FAST_TRAINER).run(
        TinyClassifier(), dm
    )
    assert torch.equal(seen["labelled"].ids, labelled_before)
    assert seen["labelled"]["embeddings"].shape == (10, 16) and seen["pool"]["embeddings"].shape == (110, 16)


def test_loop_refuses_an_estimator_without_the_labelled_requirement():
    class NeedsLabelledEmbeddings(ScoreStrategy):
        requires = frozenset({"mc_probs"})
        requires_labelled = frozenset({"embeddings"})

    with pytest.raises(ValueError, match=r"requires, \['embeddings', 'mc_probs'\], but it provides only"):
        al.ActiveLearningLoop(NeedsLabelledEmbeddings(), query_size=1, estimator=al.MCDropout(2))
