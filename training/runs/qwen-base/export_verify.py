import sys, json, numpy as np, torch
sys.path.insert(0, "/work/main")
from peft import get_peft_model
from training import loop, export as E
from training.common import load_base, resolve_base
base = resolve_base("qwen2.5-coder-1.5b")
torch.manual_seed(0)
model, _ = load_base(base)
m = get_peft_model(model, loop.lora_config(model, r=8, alpha=16, dropout=0, targets=["q_proj", "k_proj"], top_layers=28))
with torch.no_grad():
    for n, p in m.named_parameters():
        if "lora_B" in n:
            p.normal_(0, 0.02)
m.save_pretrained("/tmp/tm/qk_adapter")
del m, model
out = E.export_lora("/tmp/tm/qk_adapter", "/tmp/tm/qk.gguf", base=base)
res = E.verify(base, "/tmp/tm/qk_adapter", out, n_new=8)
print("NEW", json.dumps({k: res[k] for k in ("kl", "kl_adapter_vs_base", "argmax_same", "greedy_common_prefix")}))
E.ROPE_PERMUTED = frozenset({"llama", "qwen2"})  # the old behaviour: permute q/k rows for qwen2 too
out2 = E.export_lora("/tmp/tm/qk_adapter", "/tmp/tm/qk_old.gguf", base=base)
res2 = E.verify(base, "/tmp/tm/qk_adapter", out2, n_new=8)
print("OLD", json.dumps({k: res2[k] for k in ("kl", "kl_adapter_vs_base", "argmax_same", "greedy_common_prefix")}))
