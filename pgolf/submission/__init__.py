"""A submission's record folder (`pgolf submission export`) and its self-contained train_gpt.py."""
