"""Scalable oversight: debate on sparse-pixel judges (Irving, Christiano & Amodei 2018, MNIST), with a consultancy
baseline and judge accuracy/calibration metrics for any transcript file."""

from .judge import Judge, JudgeConfig, encode, judge_logits, load_images, load_judge, random_reveals, save_judge, train_judge

__all__ = ["Judge", "JudgeConfig", "encode", "judge_logits", "load_images", "load_judge", "random_reveals",
           "save_judge", "train_judge"]
