"""Shared test set-up.

* float64 everywhere, so rules are compared with the float64 reference at tight
  tolerances (float32 behaviour is tested with explicit dtypes);
* fast compilation (XLA flags below);
* the ``slow`` marker (registered in pyproject.toml) on the tests listed below, so
  that ``pytest -m "not slow"`` is a quick run; CI runs everything.
"""

import os
import pathlib

# The test programs are small: XLA's CPU optimisation passes cost more compile time
# than they save (the suite runs ~20% faster). A user's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Measured with `pytest --durations=40` over the whole suite (2 shared CPU cores):
# the slowest tests, then whole files whose tests are mostly slow. Kept here, in one
# list, rather than as decorators spread over files that are edited in parallel;
# a test may also carry `@pytest.mark.slow` itself.
_SLOW_FILES = {
    "tests/test_torchvision.py",  # full-size VGG-16 / ResNet-50
    "tests/test_variants.py",  # 19 of the 40 slowest tests
    "tests/test_transformer_models.py",
    "tests/test_properties.py",  # hypothesis
    "tests/test_models.py",  # the VGG and ResNet zoo, linen and nnx
    "tests/test_recurrent_models.py",  # scans over 28-100 steps
    "tests/test_docs.py",  # README, docs pages and docstring examples, each a model
    "tests/test_catalogue.py",  # 34 layer families x every preset
    "tests/test_papers.py",  # the seed papers' rules and experiments in small
    "tests/test_matchers.py",  # many small compositions, one trace each
    "tests/test_model_styles.py",  # Equinox, Flax-example ResNet, nnx, BERT stand-in
}
_SLOW_TESTS = {
    # fourth round, after the long-tail work (`-m "not slow" --durations=25`)
    "tests/test_networks.py::test_matching_by_name_and_by_parameter_path_agree",
    "tests/test_long_tail.py::test_explain_from_an_embedding_output_of_token_ids",
    "tests/test_long_tail.py::test_traced_out_of_range_target_is_nan_for_that_example_only",
    "tests/test_long_tail.py::test_attention_over_tokens_is_not_training_mode",
    "tests/test_transforms.py::test_vmap_over_unbatched_function",
    "tests/test_recurrent.py::test_lstm_signal_takes_all_conserves_and_scan_equals_unrolled",
    "tests/test_transformers.py::test_flax_attention_model_explained_without_changes",
    "tests/test_transforms.py::test_vmap_equals_loop_and_batch",
    "tests/test_transforms.py::test_jit_equals_eager",
    "tests/test_transforms.py::test_shard_map_with_psum_inside_the_model",
    "tests/test_transforms.py::test_sharded_over_8_devices_equals_single_device",
    "tests/test_models.py::test_canonical_composite_linen_vmap_equals_nnx",
    "tests/test_reference.py::test_forward_and_grad_match_jax",
    "tests/test_recurrent.py::test_flax_lstm_cell_in_rnn",
    "tests/test_demo.py::test_demo_end_to_end",
    "tests/test_demo.py::test_bad_arguments_exit_non_zero",  # a python process per case
    "tests/test_docs.py::test_markdown_code_blocks_run",
    "tests/test_docs.py::test_docstring_examples_run",
    # second round: the slowest of the quick set (`-m "not slow" --durations=25`)
    "tests/test_docs.py::test_readme_ten_lines_are_self_contained",
    "tests/test_api.py::test_shape_dtype_and_target_conventions",
    "tests/test_canonize.py::test_batchnorm_before_a_layer_passes_relevance",
    "tests/test_canonize.py::test_batchnorm_folding_equals_manual_folding",
    "tests/test_canonize.py::test_folded_layers_are_reported",
    "tests/test_canonize.py::test_unbatched_flax_conv_batchnorm_is_folded_under_vmap",
    "tests/test_dataset.py::test_sharded_over_8_devices_equals_one_device_and_resumes",
    "tests/test_flax.py::test_linen_one_line_equals_core",
    "tests/test_flax.py::test_nnx_equals_linen_and_core",
    "tests/test_metrics.py::test_jit_equals_eager",
    "tests/test_metrics.py::test_mprt_cascades_from_last_layer_and_matches_scipy",
    "tests/test_metrics.py::test_vmap_over_single_examples_equals_batched",
    "tests/test_networks.py::test_conservation_on_zero_bias_networks",
    "tests/test_networks.py::test_lrp0_equals_gradient_times_input",
    "tests/test_transformers.py::test_cp_lrp_conserves_on_a_zero_bias_transformer",
    # third round (idle machine, `-m "not slow" --durations=15`)
    "tests/test_transformers.py::test_attn_lrp_sends_relevance_through_the_attention_weights",
    "tests/test_canonize.py::test_residual_branch_is_not_mistaken_for_batchnorm_statistics",
    "tests/test_api.py::test_layers_without_name_stack_are_named_by_parameter_path",
    "tests/test_networks.py::test_layerwise_composite_matches_reference",
    "tests/test_recurrent.py::test_nnx_rnn_with_lstm_cell",
}


def pytest_collection_modifyitems(config, items):
    root = pathlib.Path(str(config.rootpath))
    for item in items:
        path = pathlib.Path(str(item.path)).relative_to(root).as_posix()
        name = f"{path}::{item.originalname}" if hasattr(item, "originalname") else item.nodeid
        if path in _SLOW_FILES or name in _SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
