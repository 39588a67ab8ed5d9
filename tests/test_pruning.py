"""Channel relevance over a batch (Yeom et al. 2021's pruning criterion)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxlrp import composites, concepts, data, models


@pytest.fixture(scope="module")
def cnn():
    ds = data.shapes(0, 6, size=16)
    model = models.CNN(num_classes=4, channels=(3, 5), hidden=6)
    variables = model.init(jax.random.key(0), ds.x[:1])
    return model, variables, ds.x, ds.y


def test_channel_relevance_is_the_summed_concept_scores(cnn):
    model, variables, x, y = cnn
    comp = composites.EpsilonPlus()
    scores = jax.jit(concepts.channel_relevance(model.apply, comp))(variables, x, target=y)
    assert set(scores) == {"CNN/conv1", "CNN/conv2", "CNN/fc1", "CNN/head"}
    for key in ("CNN/conv1", "CNN/fc1"):
        per_example = concepts.relevance_scores(model.apply, comp, key)(variables, x, target=y)
        np.testing.assert_allclose(scores[key], per_example.sum(0), rtol=1e-5, atol=1e-6)
    only = concepts.channel_relevance(model.apply, comp, layers="conv")(variables, x, target=y)
    assert set(only) == {"CNN/conv1", "CNN/conv2"}
    with pytest.raises(ValueError, match="matches no layer"):
        concepts.channel_relevance(model.apply, comp, layers="*/nothing")(variables, x, target=y)
