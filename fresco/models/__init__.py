"""The networks FRESCO runs: Stable Diffusion 1.5 components and the tiny random-weight stand-in (sd.py), and the
optical-flow estimators behind one interface (flow.py). diffusers/transformers are imported only when a model is
built."""
from .flow import FLOW_ESTIMATORS, DISFlow, FlowEstimator, RAFTFlow, batch_flows, get_flow_estimator
from .sd import (CONTROL_TYPES, CONTROLNET_IDS, TINY, TINY_NAMES, Components, load_components, make_scheduler,
                 resolve_device, resolve_dtype, tiny_components)

__all__ = ["FLOW_ESTIMATORS", "DISFlow", "FlowEstimator", "RAFTFlow", "batch_flows", "get_flow_estimator",
           "CONTROL_TYPES", "CONTROLNET_IDS", "TINY", "TINY_NAMES", "Components", "load_components",
           "make_scheduler", "resolve_device", "resolve_dtype", "tiny_components"]
