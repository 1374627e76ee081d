"""Artifact layouts that plain transformers cannot load by itself, and the one loader
(`loader.load_pretrained`, exported as `squash.load_pretrained`) that loads every artifact."""
