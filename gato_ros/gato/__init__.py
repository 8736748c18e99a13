"""ROS-free Gato core (Reed et al. 2022): tokenizer, text model, episode serialization, episode data
format, training datasets, and the model, trainer and KV-cached decoder built on them.

Imports stay lazy (import the sub-module you need) so that a light consumer such as the data recorder
does not pay for torch.
"""
