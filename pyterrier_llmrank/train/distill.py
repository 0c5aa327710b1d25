"""DeAR stage 1: distil a teacher's scores into a pointwise sequence-classification student with LoRA.

Abdallah et al., "DeAR: Dual-Stage Document Reranking with Reasoning Agents via LLM Distillation", Findings of
EMNLP 2025 (arXiv 2508.16998). Reference training code: DataScienceUIBK/DeAR-Reranking
``pointwise_reranker/modeling.py`` (``DistillRerankerModel.forward`` and ``.build``), ``rank_loss.py``
(``RankLoss.rank_net``, ``RankLoss.list_net``) and ``train_pointwise.sh`` (hyper-parameters).

The student is a decoder LM with a one-label classification head (``AutoModelForSequenceClassification``,
``pad_token_id`` set to 0 when the config has none, as ``DistillRerankerModel.build``) and a LoRA adapter
(:data:`DEAR_LORA`: r 32, alpha 64, dropout 0.1 on q/v/o/down/up/gate projections; the head is trained and
saved with the adapter, peft's ``SEQ_CLS`` task). Its input and pooling are exactly those of
:class:`~pyterrier_llmrank.pointwise.DeARPointwise` (the training forward builds the pair with
``DeARPointwise.prompt_ids`` and reads the hidden state ``DeARPointwise`` reads), so the saved folder loads
into ``DeARPointwise(folder)`` and scores as trained.

A group is one positive (position 0, as the reference's ``train_n_passages`` groups) and ``n_negatives``
negatives (1 by default, as the reference's ``--train_n_passages 2``); with student scores ``s`` and teacher scores ``t`` of a group (``B x N``) the loss is::

    (1 - alpha) * L_main(s) + alpha * T**2 * KL(softmax(t / T) || softmax(s / T))      (batchmean)

with T = 2 and alpha = 0.1 (``train_pointwise.sh``: ``--temperature 2 --alpha 0.1``), and ``L_main``
(``loss``):

* ``'ce'`` (``softmax_ce``): cross-entropy of the group softmax with the positive as the target;
* ``'ranknet'`` (``ranknet_binary``): RankNet, binary cross-entropy with logits of ``s_i - s_j`` over the
  pairs ``i < j`` of the group against the soft target ``sigmoid(y_i - y_j)`` with y = 1 for the positive, 0
  for the negatives (so 0.731 for positive-negative pairs and 0.5 for negative-negative pairs, as
  ``RankLoss.rank_net``);
* ``'ce+ranknet'`` (``ranknet_binary_softmax_ce``): ``0.5 * ranknet + 0.5 * ce``;
* ``'ranknet-teacher'`` / ``'listnet-teacher'`` (``ranknet_teacher`` / ``listnet_teacher``): RankNet against
  ``sigmoid(t_i - t_j)`` / ListNet (KL of softmaxes) against the teacher scores.

Teacher: any scorer transformer of this toolkit (``teacher: {class: ..., kwargs: ...}``, applied to the
frame ``qid, query, docno, text`` of the groups' documents; default UPR on SmolLM2-135M-Instruct), or a stored
score file (``teacher_scores``: ``qid docno score`` or TREC run lines). The teacher's scores are computed once,
before training, for the documents of the groups the configured steps read, and written to
``<output_dir>/teacher_scores.tsv`` (reused on resume).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from pyterrier_llmrank import models
from pyterrier_llmrank.causal import decoder_body, model_inputs
from pyterrier_llmrank.train.common import DEFAULT_LORA_TARGETS
from pyterrier_llmrank.train.data import group_lengths
from pyterrier_llmrank.train.loop import train_loop, used_groups
from pyterrier_llmrank.train.recipe import add_lora, finish, import_object, make_groups, prepare, resolve_config

__all__ = ['main', 'distill_loss', 'rank_net', 'list_net', 'DeARStudent', 'read_teacher_scores', 'DEAR_LORA',
           'DEAR_TEMPERATURE', 'DEAR_ALPHA', 'DEAR_REFERENCE', 'DISTILL_DEFAULTS', 'LOSSES']

#: LoRA of ``DistillRerankerModel.build`` (DataScienceUIBK/DeAR-Reranking ``pointwise_reranker/modeling.py``).
DEAR_LORA = {'r': 32, 'alpha': 64, 'dropout': 0.1,
             'target_modules': ['q_proj', 'v_proj', 'o_proj', 'down_proj', 'up_proj', 'gate_proj'],
             'layers_to_transform': None}
assert set(DEAR_LORA['target_modules']) == set(DEFAULT_LORA_TARGETS)
#: ``train_pointwise.sh``: ``--temperature 2 --alpha 0.1``.
DEAR_TEMPERATURE = 2.0
DEAR_ALPHA = 0.1
#: ``ranknet_binary_softmax_ce``: ``beta * ranknet + (1 - beta) * ce`` with beta 0.5.
DEAR_RANKNET_CE_BETA = 0.5

LOSSES = ('ce', 'ranknet', 'ce+ranknet', 'ranknet-teacher', 'listnet-teacher')

#: The reference's training values (DataScienceUIBK/DeAR-Reranking at commit
#: c31c73985f0f7546ef7598a3c8815ef6594a6190: ``train_pointwise.sh``, and ``pointwise_reranker/arguments.py`` for
#: what the script leaves at its default), under this recipe's keys.
DEAR_REFERENCE: Dict[str, Any] = {
    'n_negatives': 1,              # --train_n_passages 2: one positive, one negative a group
    'batch_size': 2,               # --per_device_train_batch_size 2
    'grad_accum': 2,               # --gradient_accumulation_steps 2
    'lr': 1e-4,                    # --learning_rate 1e-4
    'temperature': 2.0,            # --temperature 2
    'alpha': 0.1,                  # --alpha 0.1
    'max_query_tokens': 32,        # --q_max_len 32
    'max_passage_tokens': 196,     # --p_max_len 196
    'loss': 'ce',                  # not set: arguments.py ModelArguments.loss_type = "softmax_ce"
    'warmup_ratio': 0.1,           # not set: arguments.py ModelTrainingArguments.warmup_ratio = 0.1
    'max_grad_norm': 1.0,          # not set: arguments.py ModelTrainingArguments.max_grad_norm = 1.0
}

#: Defaults of the ``distill`` recipe: the reference's values (:data:`DEAR_REFERENCE`). Not expressible here: the
#: reference trains 2 epochs (``--num_train_epochs 2``), this loop a number of ``steps``; its teacher is a RankLLaMA
#: 13B (``--teacher_model_name_or_path``), here any scorer of the toolkit.
DISTILL_DEFAULTS: Dict[str, Any] = {
    **DEAR_REFERENCE, 'lora': dict(DEAR_LORA),
    'teacher': {'class': 'pyterrier_llmrank.upr:UPR', 'kwargs': {'model': 'smollm2-135m-instruct'}},
    'teacher_scores': None, 'teacher_batch_size': 16, 'bos_token': None,
}
assert DEAR_REFERENCE['temperature'] == DEAR_TEMPERATURE and DEAR_REFERENCE['alpha'] == DEAR_ALPHA


def rank_net(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RankNet of ``RankLoss.rank_net``: BCE-with-logits of ``pred_i - pred_j`` vs ``sigmoid(target_i - target_j)``
    over the pairs ``i < j`` of each row (mean over all such pairs of the batch)."""
    diff_pred = pred.unsqueeze(2) - pred.unsqueeze(1)
    soft = torch.sigmoid((target.unsqueeze(2) - target.unsqueeze(1)).detach())
    mask = torch.triu(torch.ones_like(soft, dtype=torch.bool), diagonal=1)
    return F.binary_cross_entropy_with_logits(diff_pred[mask], soft[mask])


def list_net(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ListNet of ``RankLoss.list_net``: ``KL(softmax(target) || softmax(pred))``, batchmean."""
    return F.kl_div(F.log_softmax(pred, 1), F.softmax(target, 1).detach(), reduction='batchmean')


def distill_loss(student: torch.Tensor, teacher: Optional[torch.Tensor], loss: str = 'ce',
                 temperature: float = DEAR_TEMPERATURE,
                 alpha: float = DEAR_ALPHA) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The loss of ``DistillRerankerModel.forward`` for grouped scores (``B x N``, positive at index 0).

    Args:
        student: Student scores ``B x N``.
        teacher: Teacher scores ``B x N`` (``None``: ``L_main`` only, as the reference without a teacher).
        loss: One of :data:`LOSSES`.
        temperature: Distillation temperature T.
        alpha: Weight of the KL term.

    Returns:
        ``(total, {'main': float, 'kl': float})``.
    """
    if loss not in LOSSES:
        raise ValueError(f'loss must be one of {LOSSES}, got {loss!r}')
    binary = torch.zeros_like(student)
    binary[:, 0] = 1
    target0 = torch.zeros(student.shape[0], dtype=torch.long, device=student.device)
    if loss.endswith('-teacher') and teacher is None:
        raise ValueError(f'loss {loss!r} needs teacher scores')
    if loss == 'ce':
        main = F.cross_entropy(student, target0)
    elif loss == 'ranknet':
        main = rank_net(student, binary)
    elif loss == 'ce+ranknet':
        beta = DEAR_RANKNET_CE_BETA
        main = beta * rank_net(student, binary) + (1 - beta) * F.cross_entropy(student, target0)
    elif loss == 'ranknet-teacher':
        main = rank_net(student, teacher)
    else:
        main = list_net(student, teacher)
    if teacher is None:
        return main, {'main': float(main.detach()), 'kl': float('nan')}
    kl = F.kl_div(F.log_softmax(student / temperature, 1), F.softmax(teacher.detach() / temperature, 1),
                  reduction='batchmean') * temperature ** 2
    total = (1 - alpha) * main + alpha * kl
    return total, {'main': float(main.detach()), 'kl': float(kl.detach())}


class DeARStudent:
    """A LoRA sequence-classification student scoring pairs exactly as :class:`DeARPointwise` does, with gradients.

    Args:
        model: Base model name or folder (recorded in the adapter as its base).
        lora: LoRA settings (``r``, ``alpha``, ``dropout``, ``target_modules``, ``layers_to_transform``).
        max_query_tokens, max_passage_tokens, bos_token: As :class:`DeARPointwise`.
        device, dtype: Where and how to train.
    """

    def __init__(self, model: str, lora: Dict[str, Any], *, max_query_tokens: int = 32, max_passage_tokens: int = 196,
                 bos_token: Optional[str] = None, device: Any = 'cpu', dtype: Any = 'float32') -> None:
        from pyterrier_llmrank.pointwise import DeARPointwise
        base, tok = models.load_sequence_classifier(model, device=device, dtype=dtype, num_labels=1, shared=False)
        if base.config.pad_token_id is None:
            base.config.pad_token_id = 0  # DistillRerankerModel.build / load_dear
        self.peft = add_lora(base, lora, 'SEQ_CLS', model)
        self.model = self.peft.get_base_model()  # the LoRA-injected *ForSequenceClassification
        self.tokenizer = tok
        self.scorer = DeARPointwise((self.model, tok), max_query_tokens=max_query_tokens,
                                    max_passage_tokens=max_passage_tokens, bos_token=bos_token, prefix_reuse=False,
                                    device=device, dtype=dtype)
        self.reranker_kwargs = {'max_query_tokens': max_query_tokens, 'max_passage_tokens': max_passage_tokens,
                                'bos_token': bos_token}

    def scores(self, pairs: Sequence[Tuple[str, str]]) -> torch.Tensor:
        """Differentiable scores of ``(query, text)`` pairs (the logits ``DeARPointwise`` returns)."""
        s = self.scorer
        seqs = [s.prompt_ids(q, t) for q, t in pairs]
        body = decoder_body(self.model)
        out = torch.zeros(len(seqs), device=next(self.model.parameters()).device)
        if s.pooling == 'padded':
            parts = [([i for i, x in enumerate(seqs) if len(x) < s.max_length], (s.pad, s.max_length - 1)),
                     ([i for i, x in enumerate(seqs) if len(x) >= s.max_length], None)]
        else:
            parts = [(list(range(len(seqs))), None)]
        chunks = []
        for idx, extra in parts:
            if not idx:
                continue
            inputs = model_inputs(self.model, [seqs[i] for i in idx], s.pad, None, None, extra)
            hidden = body(**inputs).last_hidden_state[:, -1]
            chunks.append((idx, s.head(hidden.to(s.head.weight.dtype))[:, 0].float()))
        index = torch.tensor([i for idx, _ in chunks for i in idx], device=out.device)
        values = torch.cat([v for _, v in chunks])
        return out.index_put((index,), values)


def read_teacher_scores(path: str) -> Dict[Tuple[str, str], float]:
    """Reads ``qid docno score`` lines or TREC run lines (``qid Q0 docno rank score tag``)."""
    scores: Dict[Tuple[str, str], float] = {}
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 3:
                qid, docno, score = parts
            elif len(parts) == 6:
                qid, _, docno, _, score, _ = parts
            else:
                raise ValueError(f'{path}:{lineno}: expected "qid docno score" or a TREC run line, got {line!r}')
            scores[qid, docno] = float(score)
    return scores


def _teacher_scores(cfg: Dict[str, Any], groups: List[Dict[str, Any]]) -> Dict[Tuple[str, str], float]:
    from pyterrier_llmrank.train.data import groups_frame
    out = Path(cfg['output_dir'])
    cached = out / 'teacher_scores.tsv'
    source = cfg['teacher_scores'] or (str(cached) if cached.exists() else None)
    # only the groups the run reads (all of them once the steps cover an epoch)
    used = [groups[i] for i in used_groups(len(groups), cfg, int(cfg['seed']), group_lengths(groups))]
    needed = groups_frame(used).drop_duplicates(['qid', 'docno']).reset_index(drop=True)
    if source is not None:
        scores = read_teacher_scores(source)
    else:
        spec = cfg['teacher']
        if not spec:
            raise ValueError('distill needs a teacher or teacher_scores')
        kwargs = dict(spec.get('kwargs') or {})
        kwargs.setdefault('batch_size', cfg['teacher_batch_size'])
        teacher = import_object(spec['class'])(**kwargs)
        t0 = time.time()
        res = teacher(needed[['qid', 'query', 'docno', 'text']])
        scores = {(str(q), str(d)): float(s) for q, d, s in zip(res['qid'], res['docno'], res['score'])}
        out.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix('.tmp')
        tmp.write_text(''.join(f'{q}\t{d}\t{s!r}\n' for (q, d), s in sorted(scores.items())), encoding='utf-8')
        tmp.replace(cached)
        (out / 'teacher.txt').write_text(f'{teacher!r}\t{len(needed)} pairs\t{time.time() - t0:.1f} s\n')
        del teacher
    missing = [(q, d) for q, d in zip(needed['qid'], needed['docno']) if (q, d) not in scores]
    if missing:
        raise ValueError(f'teacher scores lack {len(missing)} (qid, docno) pairs, e.g. {missing[:3]}')
    return scores


def main(config: Dict[str, Any]) -> str:
    """Runs the ``distill`` recipe; returns the output folder (loads with ``DeARPointwise(folder)``)."""
    cfg = resolve_config(config, 'distill', DISTILL_DEFAULTS)
    prepare(cfg)
    t_start = time.time()
    groups = make_groups(cfg)
    use_teacher = cfg['alpha'] > 0 or cfg['loss'].endswith('-teacher')
    teacher = _teacher_scores(cfg, groups) if use_teacher else None
    t_teacher = time.time() - t_start
    prepare(cfg)
    student = DeARStudent(cfg['model'], cfg['lora'], max_query_tokens=int(cfg['max_query_tokens']),
                          max_passage_tokens=int(cfg['max_passage_tokens']), bos_token=cfg['bos_token'],
                          device=cfg['device'], dtype=cfg['dtype'])

    def loss_fn(batch: List[Dict[str, Any]]) -> Tuple[torch.Tensor, Dict[str, float]]:
        n = 1 + len(batch[0]['negatives'])
        pairs = [(g['query'], t) for g in batch for t in [g['positive'], *g['negatives']]]
        s = student.scores(pairs).view(len(batch), n)
        t = None
        if teacher is not None:
            t = torch.tensor([[teacher[g['qid'], d] for d in [g['positive_docno'], *g['negative_docnos']]]
                              for g in batch], dtype=s.dtype, device=s.device)
        return distill_loss(s, t, cfg['loss'], float(cfg['temperature']), float(cfg['alpha']))

    summary = train_loop(student.model, groups, loss_fn, output_dir=cfg['output_dir'], cfg=cfg, seed=int(cfg['seed']),
                         log_columns=['main', 'kl'], desc='distill', verbose=bool(cfg['verbose']),
                         lengths=group_lengths(groups))
    summary.update(groups=len(groups), teacher_seconds=round(t_teacher, 2),
                   total_seconds=round(time.time() - t_start, 2))
    if not summary['finished']:
        return str(cfg['output_dir'])
    return finish(student.peft, student.tokenizer, cfg, summary, 'DeARPointwise',
                  student.reranker_kwargs)
