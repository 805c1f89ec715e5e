"""rstar-app: rStar-Math style MCTS over code-augmented steps, on a laptop.

Kept import-light on purpose: `import rstar_app` must not pull in llama_cpp, torch or gradio.
"""

__version__ = "0.1.0"
