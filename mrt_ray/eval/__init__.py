"""Evaluation: budget forcing prompts (`forcing`), regret (`regret`), metrics (`metrics`) and PNG plots (`plots`).

Kept import-light: import the submodule you need (`plots` pulls in matplotlib).
"""
