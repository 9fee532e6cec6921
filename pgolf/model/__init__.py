"""The GPT model of the baseline architecture; every choice is a field of `train.model`."""

from pgolf.model.gpt import GPT, build_model, count_params, model_config_dict

__all__ = ["GPT", "build_model", "count_params", "model_config_dict"]
