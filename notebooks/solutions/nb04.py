"""Solution of notebook 04: exercise 4 (the teacher's log-probs, aligned with the student's)."""

import torch

from rlsd_min.sampling import encode_prompts


def my_teacher_logprobs(model, tok, teacher_prompts: list, rollout) -> torch.Tensor:
    G = rollout.group_size
    completion, c_mask = rollout.completion_ids, rollout.completion_mask        # (N, T)
    ids, mask = encode_prompts(tok, teacher_prompts, completion.device)         # (B, P') left-padded
    ids, mask = ids.repeat_interleave(G, dim=0), mask.repeat_interleave(G, dim=0)   # (N, P')
    P, T = ids.shape[1], completion.shape[1]
    full = torch.cat([ids, completion], dim=1)                                  # (N, P' + T)
    attn = torch.cat([mask, c_mask], dim=1)
    positions = (attn.cumsum(dim=1) - 1).clamp(min=0)                            # real tokens only
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=attn, position_ids=positions).logits
    logits = logits[:, P - 1:P - 1 + T].float()                                 # column P'-1+t predicts token t
    return torch.log_softmax(logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)   # (N, T)
