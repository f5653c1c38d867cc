"""Backbones of official_ext.

Importing `official_ext.modeling.backbones.efficientnet` registers the
'paper_efficientnet' builder with Model Garden's backbone factory.
"""
