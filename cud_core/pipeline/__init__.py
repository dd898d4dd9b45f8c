"""The pipeline: stages that turn a model and data into stored results (scenario, knowledge filter,
fine-tuning, scoring, unlearning outcomes, calibration, ablation, re-attribution, faithfulness, predict),
their estimates, presets, executors and background jobs. Imports every layer below it.
"""
