"""Monte Carlo Tree Search as in rStar-Math, and a variant that finishes rollouts by sampling.

`mcts`: one rollout walks from the root by UCT (c = 2), expanding each unexpanded node it reaches
into K checked candidates, until it reaches an answer (terminal) or a dead end; the terminal's
reward (+1/-1 against ground truth in training, else its PPM score) is backed up the path. With a
PPM, each new node starts with Q = its PPM score, counting as one visit. Evaluated terminals and
dead nodes are closed (never selected again); a node whose children are all closed is closed too.

`mcts_sim`: the same selection, but below the one node a rollout expands into K candidates it
finishes the trajectory by simulation, one sampled step at a time (classic MCTS's rollout
policy). A node made that way holds a single child until a later rollout's selection reaches it;
then it gets its other K - 1 candidates, and so on below. Why: at 8 x 4 a rollout spends about K
steps' tokens per level on a fresh path, and a tree ends in ~8 terminals where best-of-16 ends in
~16 at the same tokens; the answer rules need the terminals (training/RESULTS.md, "Search budget
and strategy"). Rewards, backups and closing as in `mcts`, plus: a simulated step is sampled, never
the greedy one (greedy_first applies to full expansions); a node never holds more than K children;
a walk that only finds nothing new to draw (a re-sample repeating a sibling, or a node with all K
candidates drawn and closed) closes that node and walks again from the root, so every rollout backs
up one reward (a terminal's, or -1 where the candidates drawn died) until the tree is exhausted.
"""

from __future__ import annotations

from ..tree import DEAD, TERMINAL, Node, Tree
from .common import DEAD_REWARD, Search, backup_terminal, run_loop


NO_STEP = "no valid next step among the candidates"


def mcts(s: Search) -> Tree:
    """rStar-Math's MCTS: every node a rollout reaches unexpanded gets K candidates."""
    return _mcts(s, simulate=False)


def mcts_sim(s: Search) -> Tree:
    """MCTS whose rollouts expand one node into K candidates, then finish by single samples."""
    return _mcts(s, simulate=True)


def _mcts(s: Search, *, simulate: bool) -> Tree:
    tree, c = s.tree, s.config
    closed: set[int] = set()
    partial: set[int] = set()  # nodes with fewer than K candidates drawn so far (mcts_sim only)

    def close(node: Node) -> bool:
        """Close `node` and every ancestor left without an open child (a partial node stays open:
        it has candidates to draw); False once the root closes."""
        cur: Node | None = node
        while cur is not None:
            closed.add(cur.id)
            cur = tree.nodes[cur.parent] if cur.parent is not None else None
            if cur is not None and (cur.id in partial or any(i not in closed for i in cur.children)):
                break
        return 0 not in closed

    def open_kids(node: Node) -> list[Node]:
        return [tree.nodes[i] for i in node.children if i not in closed]

    def grow(node: Node, n: int, greedy_first: bool | None = None) -> None:
        """Add up to n candidates under `node`; a node none of whose candidates is valid is a dead
        end (-1 backed up; a node that holds a terminal already, closed, is not)."""
        s.expand(node, n=n, greedy_first=greedy_first)
        for i in node.children:
            if tree.nodes[i].status == DEAD:
                closed.add(i)
        if node.status != DEAD and node.id not in partial and all(tree.nodes[i].status == DEAD for i in node.children):
            s.kill(node, NO_STEP)

    def descend() -> bool | None:
        """One walk from the root. True/False (the root still open / closed) once a reward was
        backed up or the root closed; None when the walk only closed a node it could draw
        nothing new under (mcts_sim), so that the rollout walks again."""
        node, simulating = tree.root, False
        while True:
            s.check_cancel()
            if node.status == TERMINAL:
                backup_terminal(s, node)
                return close(node)
            if simulating and (not node.children or not open_kids(node)):
                # one sampled step (never the greedy one); the node keeps room for the rest of its K
                before = len(node.children)
                if before < c.candidates:
                    partial.add(node.id)
                    grow(node, 1, greedy_first=False)
                if node.status == DEAD:  # prepare() found no room for a step: -1 already backed up
                    return close(node)
                if len(node.children) == before or len(node.children) >= c.candidates:
                    partial.discard(node.id)  # all K drawn, or the sample repeated a sibling
                if len(node.children) == before:
                    return close(node) and None  # nothing new to draw here: walk again
                new = tree.nodes[node.children[-1]]
                if new.status == DEAD:  # this sample died: -1 up the path
                    tree.backup(node, DEAD_REWARD)
                    if node.id in partial:
                        return 0 not in closed
                    if all(tree.nodes[i].status == DEAD for i in node.children):
                        s.mark_dead(node, NO_STEP)  # K candidates, none valid (-1 just backed up)
                    return close(node)
                node = new
                continue
            if not simulating and (not node.children or node.id in partial):
                partial.discard(node.id)
                before = len(node.children)
                if c.candidates > before:
                    grow(node, c.candidates - before)
                if node.status == DEAD:
                    return close(node)
                if not open_kids(node):
                    if len(node.children) > before:  # its last candidates all died: -1 up the path
                        tree.backup(node, DEAD_REWARD)
                        return close(node)
                    return close(node) and None
                simulating = simulate
            kids = open_kids(node)
            if not kids:
                return close(node) and None
            # max UCT; ties go to the earlier child so seeded runs are reproducible
            node = max(kids, key=lambda k: (tree.uct(k, c.c_puct), -k.id))

    def rollout(_: int) -> bool:
        while True:  # each walk that returns None closes a node for good, and the tree is
            # finite (at most K children a node, max_depth levels), so this ends
            more = descend()
            if more is not None:
                return more

    return run_loop(s, rollout)
