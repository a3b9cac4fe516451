#!/usr/bin/env bash
# Generation on a GPU host: the CUDA sampler agrees with the CPU one, then the CPU benchmark there.
#   OUT=/tmp/out bash benchmarks/sampling_device_check.sh
set -u
export PYTHONPATH=$PWD NO_COLOR=1 PYTHONUNBUFFERED=1
python3 -c "import torch, sys; print('torch', torch.__version__, sys.version.split()[0], torch.backends.cpu.get_cpu_capability())"
lscpu | grep -E "Model name|^CPU\(s\)"
python3 - <<'PY'
import torch
from lstmgen.config import ModelConfig, TokenizerConfig
from lstmgen.model import LSTMLanguageModel
from lstmgen.sampling import Sampler, SamplingOptions
from lstmgen.tokenizer import train_tokenizer
lines = open("corpora/tinyshakespeare.txt").read().splitlines(keepends=True)[:3000]
tok = train_tokenizer(lines, TokenizerConfig(model_type="char"))
model = LSTMLanguageModel(ModelConfig(vocab_size=tok.vocab_size, embedding_size=64, hidden_size=64, num_layers=2, dropout=0.0))
cpu = Sampler(model.eval(), tok)
gpu = Sampler(LSTMLanguageModel(model.config).cuda().eval(), tok, device="cuda")
gpu.model.load_state_dict(model.state_dict())
gpu.stepper = type(gpu.stepper)(gpu.model)
opts = SamplingOptions(max_tokens=40, seed=3, top_k=20, top_p=0.9)
def texts(s, it):
    return [x.text for _, x in it if not isinstance(x, str)]
a = texts(cpu, cpu.stream_batch(["a", "To be", ""], opts)); b = texts(gpu, gpu.stream_batch(["a", "To be", ""], opts))
print("cuda generate_batch ok", len(b), "same as cpu:", a == b)
PY
for t in 2; do
  timeout 330 python3 benchmarks/bench_sampling.py --threads $t --doc $OUT/bench-t$t.md 2>&1 | tail -16
done
