"""What every strategy shares: budgets, cancellation, and expanding a node into checked children.

Expanding a node = ask the policy for K candidate next steps in one batch, parse each, drop
duplicates, run the cumulative program of each code step in the sandbox, score survivors with the
PPM (when loaded) and add them to the tree. Dead ends are marked here with the reason in words.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..config import SearchConfig
from ..grading import is_correct, same_answer
from ..models.base import Candidate, ContextFull, Executor, Policy, ValueModel
from ..selector import Selector
from ..steps import STOP, Step, parse_step, render_step
from ..tree import DEAD, ERROR, OK, TERMINAL, Cancelled, Event, Node, Tree

DEAD_REWARD = -1.0


class OutOfBudget(Exception):
    """A time or token budget ran out in the middle of a rollout; str(e) says which."""


@dataclass
class Search:
    """The state one search run carries around: models, settings, budget counters."""

    tree: Tree
    policy: Policy
    ppm: ValueModel | None
    executor: Executor
    config: SearchConfig
    gold: str | None = None               # ground truth for rewards: training rollouts only
    should_stop: Callable[[], bool] | None = None
    selector: Selector | None = None      # the learned answer rule (vote "auto" / "learned")
    started: float = field(default_factory=time.monotonic)
    tokens: int = 0
    rollouts: int = 0
    expansions: int = 0
    exec_seconds: float = 0.0
    gen_seconds: float = 0.0
    ppm_seconds: float = 0.0
    rollout_nodes: list[int] = field(default_factory=list)   # len(tree.nodes) after each rollout
    rollout_tokens: list[int] = field(default_factory=list)  # tokens generated so far, after each rollout

    # -- budgets and cancellation --
    def out_of_budget(self) -> str | None:
        c = self.config
        if c.time_limit and time.monotonic() - self.started >= c.time_limit:
            return "time limit"
        if c.max_tokens and self.tokens >= c.max_tokens:
            return "token budget"
        return None

    def check_cancel(self) -> None:
        """Called between events: ends the search on cancellation or, mid-rollout, on a spent
        time/token budget (a rollout can take minutes on a busy CPU)."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled()
        reason = self.out_of_budget()
        if reason:
            raise OutOfBudget(reason)

    def stats(self) -> dict:
        return {
            "rollouts": self.rollouts, "nodes": len(self.tree.nodes), "tokens": self.tokens,
            "expansions": self.expansions, "seconds": round(time.monotonic() - self.started, 3),
            "generate_seconds": round(self.gen_seconds, 3), "execute_seconds": round(self.exec_seconds, 3),
            "ppm_seconds": round(self.ppm_seconds, 3), "terminals": len(self.tree.terminals()),
        }

    def seed_for(self, node: Node) -> int:
        # distinct, reproducible seeds per (search seed, node, expansion)
        return (self.config.seed * 1_000_003 + node.id * 7919 + self.expansions * 104_729) % (2**31 - 64)

    def end_rollout(self, tokens: int | None = None) -> None:
        """Bookkeeping of one finished rollout: the count, where it ended (for Tree.prefix), the
        tokens generated up to its end (default: all so far) and the "rollout" event."""
        self.rollouts += 1
        self.rollout_nodes.append(len(self.tree.nodes))
        self.rollout_tokens.append(self.tokens if tokens is None else tokens)
        self.tree.emit(Event("rollout", None, self.stats()))

    # -- rewards --
    def terminal_reward(self, node: Node) -> float:
        """+1/-1 against ground truth when given (training), else the PPM score, else 0."""
        if self.gold is not None:
            return 1.0 if node.correct else -1.0
        return node.ppm if node.ppm is not None else 0.0

    def mark_dead(self, node: Node, reason: str, tree: Tree | None = None) -> None:
        """Mark `node` a dead end, saying why (no reward is backed up: see kill)."""
        node.status, node.reason = DEAD, reason
        (self.tree if tree is None else tree).emit(Event("update", node.id, {"status": DEAD, "reason": reason}))

    def kill(self, node: Node, reason: str, tree: Tree | None = None) -> None:
        """A rollout ended in a dead end at `node`: mark it and back -1 up the path."""
        tree = self.tree if tree is None else tree
        self.mark_dead(node, reason, tree)
        tree.backup(node, DEAD_REWARD)

    # -- expansion --
    def expand(self, node: Node, *, n: int | None = None, temperature: float | None = None,
               greedy_first: bool | None = None) -> list[Node]:
        """Add up to n checked children under `node`; returns the live (non-dead) new children.
        `greedy_first` overrides the config's (a sampled continuation must not be the greedy step)."""
        c = self.config
        prefix = self.prepare(node)
        if prefix is None:
            return []
        t0 = time.monotonic()
        temperature = c.temperature if temperature is None else temperature
        cands = self.policy.generate(
            prefix, n=c.candidates if n is None else n, max_tokens=c.max_step_tokens, temperature=temperature,
            top_p=c.top_p, top_k=c.top_k, seed=self.seed_for(node), stop=STOP,
            greedy_first=(c.greedy_first if greedy_first is None else greedy_first) and temperature > 0,
        )
        self.gen_seconds += time.monotonic() - t0
        self.expansions += 1
        self.tokens += sum(cd.tokens for cd in cands)
        return self.admit(node, prefix, cands)

    def prepare(self, node: Node, tree: Tree | None = None) -> str | None:
        """The text the policy continues at `node`, or None after killing `node` at the depth
        limit or when no step fits the context window any more."""
        c, tree = self.config, self.tree if tree is None else tree
        if node.depth >= c.max_depth:
            self.kill(node, f"depth limit ({c.max_depth} steps)", tree)
            return None
        prefix = tree.text(node)
        if self.policy.count_tokens(prefix) + c.max_step_tokens > self.policy.n_ctx:
            self.kill(node, f"context window full ({self.policy.n_ctx} tokens)", tree)
            return None
        self.check_cancel()
        return prefix

    def admit(self, node: Node, prefix: str, cands: Sequence, tree: Tree | None = None) -> list[Node]:
        """Parse generated candidates for `node` (prefix = its text), drop duplicate siblings, run
        their code, PPM-score the survivors and add them all to the tree; returns the live ones."""
        tree = self.tree if tree is None else tree
        # siblings already under `node` count as seen (a node expanded twice, see mcts_sim)
        old = [tree.nodes[i] for i in node.children]
        seen_text = {" ".join(o.text.split()) for o in old}
        seen_answers = [o.answer for o in old if o.kind == "answer"]
        new: list[Node] = []
        stop: Exception | None = None
        for cd in cands:
            step = parse_step(cd.text, cd.stop)
            key = " ".join(step.text.split())
            if key in seen_text:
                continue  # duplicate sibling
            seen_text.add(key)
            if step.kind == "answer":
                if any(same_answer(step.answer, a) for a in seen_answers):
                    continue  # several siblings giving the same answer: keep one
                seen_answers.append(step.answer)
            new.append(self._add_child(node, step, cd, tree))
            try:
                self.check_cancel()  # between code runs: a cancel ends the search at once, a spent
            except OutOfBudget as e:  # budget after this batch's children are scored (below)
                stop = e
                break
        live = [ch for ch in new if ch.status != DEAD]
        if self.ppm is not None and live:
            t0 = time.monotonic()
            texts = [self._rendered(ch) for ch in live]
            try:
                scores = self.ppm.score(prefix, texts)
            except ContextFull:  # siblings with long outputs near the end of the window: one at a
                scores = []      # time, and those that still do not fit die here
                for ch, text in zip(live, texts):
                    try:
                        scores += self.ppm.score(prefix, [text])
                    except ContextFull as e:
                        self.mark_dead(ch, f"the PPM's context window is full ({e})", tree)
                live = [ch for ch in live if ch.status != DEAD]
            self.ppm_seconds += time.monotonic() - t0
            for ch, s in zip(live, scores):
                # PPM-augmented init: the score is the initial Q and counts as one visit
                ch.ppm, ch.q, ch.n = float(s), float(s), 1
                tree.emit(Event("update", ch.id, {"ppm": ch.ppm, "q": ch.q, "n": ch.n, "value": ch.value}))
        for ch in new:
            if ch.status == DEAD:  # -1 locally (reference rule); rollouts that end here back it up
                ch.q, ch.n = DEAD_REWARD, 1
                tree.emit(Event("update", ch.id, {"q": ch.q, "n": ch.n, "value": ch.value}))
        if stop is not None:  # only now: every child added is scored, so none enters the final vote
            raise stop        # at value 0 ahead of scored terminals with negative PPM scores
        return live

    def _rendered(self, node: Node) -> str:
        return render_step(Step(node.kind, node.text, code=node.code), node.output)

    def _add_child(self, parent: Node, step: Step, cand: Candidate, tree: Tree) -> Node:
        gen = {"tokens": cand.tokens, "logprob": cand.logprob}  # what generating the step cost, how sure it was
        if step.kind == "invalid":
            return tree.add(parent, kind="invalid", text=step.text, status=DEAD, reason=step.reason, **gen)
        if step.kind == "answer":
            if parent.kind != "final_code":
                # an answer must follow the program's output; one out of nowhere is a guess
                return tree.add(parent, kind="answer", text=step.text, answer=step.answer, status=DEAD,
                                reason="answer before the program printed a result", **gen)
            correct = is_correct(step.answer, self.gold) if self.gold is not None else None
            return tree.add(parent, kind="answer", text=step.text, answer=step.answer,
                            status=TERMINAL, correct=correct, **gen)
        if parent.kind == "final_code":
            return tree.add(parent, kind=step.kind, text=step.text, status=DEAD, **gen,
                            reason="code after the final answer was printed")
        t0 = time.monotonic()
        res = self.executor.run(tree.codes(parent) + [step.code])
        self.exec_seconds += time.monotonic() - t0
        if res.ok:
            if step.kind == "final_code" and not res.stdout.strip():
                return tree.add(parent, kind=step.kind, text=step.text, code=step.code, status=DEAD,
                                **gen, reason="the final code printed nothing")
            return tree.add(parent, kind=step.kind, text=step.text, code=step.code, output=res.stdout,
                            status=OK, **gen)
        in_row = parent.errors_in_row + 1
        dead = in_row > self.config.max_code_errors or step.kind == "final_code"
        return tree.add(parent, kind=step.kind, text=step.text, code=step.code, output=res.stdout,
                        error=res.error or res.kind, status=DEAD if dead else ERROR, **gen,
                        errors_in_row=in_row, reason=f"code failed: {res.error or res.kind}" if dead else "")

    def finish(self, stopped: str | None, top_k: int | None = None) -> Tree:
        tree = self.tree
        tree.vote(self.config.top_k_vote if top_k is None else top_k, self.config.vote, self.selector)
        # rollout_nodes lets an analysis cut a saved tree back to its first r rollouts (Tree.prefix)
        tree.meta.update({"config": self.config.to_dict(), "stats": self.stats(), "stopped": stopped,
                          "rollout_nodes": list(self.rollout_nodes), "rollout_tokens": list(self.rollout_tokens)})
        tree.emit(Event("done", None, {"answer": tree.answer, "best_path": tree.best_path, **self.stats()}))
        return tree


def walk_to_terminal(s: Search, node: Node, *, temperature: float | None = None) -> Node | None:
    """Extend one trajectory from `node` with single-candidate expansions until an answer or a dead
    end. Returns the terminal reached (None when the branch died)."""
    while True:
        if node.status == TERMINAL:
            return node
        if node.status == DEAD:
            return None
        live = s.expand(node, n=1, temperature=temperature)
        if not live:
            return None
        node = live[0]


def run_loop(s: Search, body: Callable[[int], bool], *, limit: int | None = None,
             top_k: int | None = None) -> Tree:
    """Call body(i) for i < limit (default: the rollout budget) until it returns False, a budget or
    cancellation ends the search; returns the (partial) tree with its answer voted over the top_k
    terminals (default: config.top_k_vote)."""
    stopped = None
    try:
        for i in range(s.config.rollouts if limit is None else limit):
            stopped = s.out_of_budget()
            if stopped:
                break
            s.check_cancel()
            more = body(i)
            s.end_rollout()
            if not more:
                stopped = "search space exhausted"
                break
    except Cancelled:
        stopped = "cancelled"
    except OutOfBudget as e:
        stopped = str(e)
    return s.finish(stopped, top_k)


def backup_terminal(s: Search, node: Node, tree: Tree | None = None) -> None:
    (s.tree if tree is None else tree).backup(node, s.terminal_reward(node))
