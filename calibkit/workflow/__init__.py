"""The calibration and comparison chains as plain functions, shared by the CLI and notebooks:
:mod:`~calibkit.workflow.calibration` (statistics, ranges, exports), :mod:`~calibkit.workflow.candidates`
(what a run folder holds and the models compared from it), :mod:`~calibkit.workflow.comparison`
(the comparison's stages, sensitivity), :mod:`~calibkit.workflow.speed` (timing),
:mod:`~calibkit.workflow.sections` (the report's calibration sections), :mod:`~calibkit.workflow.publish`
(the report as it grows), :mod:`~calibkit.workflow.evaluation` (``eval``'s one pass) and
:mod:`~calibkit.workflow.config` (the validated options)."""

from calibkit.workflow.calibration import (ENGINE_CHECK, CalibrationRun, calibrate, engine_check, input_shape,
                                           model_preprocess, model_preset)
from calibkit.workflow.candidates import (CALIBRATED_GRAPH, RUN_WEIGHTS, check_made_from, check_run_matches,
                                          fp16_candidate, int8_candidates, method_label, ranges_candidate,
                                          ranges_weights, run_exclusions, run_graph, run_weights)
from calibkit.workflow.comparison import (calibration_overlap, compare_and_report, image_cache, model_task,
                                          sensitivity_and_budget)
from calibkit.workflow.config import CalibrationConfig, ComparisonOptions
from calibkit.workflow.publish import partial_report
from calibkit.workflow.sections import calibration_sections
from calibkit.workflow.speed import bench_models, usable_batch_sizes

__all__ = ["CALIBRATED_GRAPH", "ENGINE_CHECK", "RUN_WEIGHTS", "CalibrationConfig", "CalibrationRun",
           "ComparisonOptions", "bench_models", "calibrate", "calibration_overlap", "calibration_sections",
           "check_made_from", "check_run_matches", "compare_and_report", "engine_check", "fp16_candidate",
           "image_cache", "input_shape", "int8_candidates", "method_label", "model_preprocess", "model_preset",
           "model_task", "partial_report", "ranges_candidate", "ranges_weights", "run_exclusions", "run_graph",
           "run_weights", "sensitivity_and_budget", "usable_batch_sizes"]
