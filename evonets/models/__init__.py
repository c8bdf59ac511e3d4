"""The EvoNet models: what `save_pretrained` copies into a model folder.

One flat folder in the style of `transformers/models/convnextv2/`: configuration, the four token mixers and the
selective-scan backends, the modeling files (backbone and classifier; segmentation, depth and view-synthesis heads;
the RT-DETR builder), and the image processor. Its files import one another relatively and nothing of this
repository outside this folder (torch and transformers only, mamba-ssm optionally), so a saved folder loads with
`trust_remote_code=True` where `evonets` is not installed. `evonets/__init__.py` registers the Auto classes.
"""
