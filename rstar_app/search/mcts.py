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
and strategy"). Same reward, backup and closing rules as `mcts`.
"""

from __future__ import annotations

from ..tree import DEAD, TERMINAL, Node, Tree
from .common import DEAD_REWARD, Search, backup_terminal, run_loop


def mcts(s: Search) -> Tree:
    """rStar-Math's MCTS: every node a rollout reaches unexpanded gets K candidates."""
    return _mcts(s, simulate=False)


def mcts_sim(s: Search) -> Tree:
    """MCTS whose rollouts expand one node into K candidates, then finish by single samples."""
    return _mcts(s, simulate=True)


def _mcts(s: Search, *, simulate: bool) -> Tree:
    tree, c = s.tree, s.config
    closed: set[int] = set()
    partial: set[int] = set()  # nodes holding the simulated child(ren) only: K - 1 candidates to come

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

    def grow(node: Node, n: int, fresh: bool) -> None:
        """Add up to n candidates under `node`; a fresh node with no valid one is a dead end."""
        if not s.expand(node, n=n) and fresh and node.status != DEAD:
            s.kill(node, "no valid next step among the candidates")
        for i in node.children:
            if tree.nodes[i].status == DEAD:
                closed.add(i)

    def rollout(_: int) -> bool:
        node, simulating = tree.root, False
        while True:
            s.check_cancel()
            if node.status == TERMINAL:
                backup_terminal(s, node)
                return close(node)
            if simulating and (not node.children or not open_kids(node)):
                # one sampled step; the node keeps room for the rest of its K candidates
                before = len(node.children)
                partial.add(node.id)
                grow(node, 1, fresh=False)
                if len(node.children) == before:  # the sample repeated a sibling: nothing new here
                    partial.discard(node.id)
                    if not open_kids(node):
                        return close(node)
                    simulating = False  # choose among the siblings as selection does
                    continue
                if tree.nodes[node.children[-1]].status == DEAD:
                    tree.backup(node, DEAD_REWARD)  # this sample died: -1 up the path; the node
                    return 0 not in closed          # keeps its other candidates for later
                node = tree.nodes[node.children[-1]]
                continue
            if not simulating and (not node.children or node.id in partial):
                fresh = not node.children
                partial.discard(node.id)
                if c.candidates > len(node.children):
                    grow(node, c.candidates - len(node.children), fresh)
                if node.status == DEAD or not open_kids(node):
                    return close(node)
                simulating = simulate
            kids = open_kids(node)
            if not kids:
                return close(node)
            # max UCT; ties go to the earlier child so seeded runs are reproducible
            node = max(kids, key=lambda k: (tree.uct(k, c.c_puct), -k.id))

    return run_loop(s, rollout)
