"""The checkpoints videovae ships, as package data (installed as `videovae_weights`).

`registry.json` lists every checkpoint videovae knows: the ones shipped in this folder and the
released ones a user downloads. Code finds them through `videovae.registry`, never by path.
"""
