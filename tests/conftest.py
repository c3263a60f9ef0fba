import torch

# Tests use small tensors: one thread avoids the large per-op overhead of intra-op threading on
# busy 2-core machines (a 6x3 softmax took 14 ms with 2 threads under load and 4 us with 1).
torch.set_num_threads(1)
