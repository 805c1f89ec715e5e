"""Monte Carlo Tree Search as in rStar-Math.

One rollout walks from the root by UCT (c = 2), expanding each unexpanded node it reaches into K
checked candidates, until it reaches an answer (terminal) or a dead end; the terminal's reward
(+1/-1 against ground truth in training, else its PPM score) is backed up the path. With a PPM,
each new node starts with Q = its PPM score, counting as one visit. Evaluated terminals and dead
nodes are closed (never selected again); a node whose children are all closed is closed too.
"""

from __future__ import annotations

from ..tree import DEAD, TERMINAL, Node, Tree
from .common import Search, backup_terminal, run_loop


def mcts(s: Search) -> Tree:
    tree, c = s.tree, s.config
    closed: set[int] = set()

    def close(node: Node) -> bool:
        """Close `node` and every ancestor left without an open child; False once the root closes."""
        cur: Node | None = node
        while cur is not None:
            closed.add(cur.id)
            cur = tree.nodes[cur.parent] if cur.parent is not None else None
            if cur is not None and any(i not in closed for i in cur.children):
                break
        return 0 not in closed

    def rollout(_: int) -> bool:
        node = tree.root
        while True:
            s.check_cancel()
            if node.status == TERMINAL:
                backup_terminal(s, node)
                return close(node)
            if not node.children:
                if not s.expand(node) and node.status != DEAD:
                    s.kill(node, "no valid next step among the candidates")
                for i in node.children:
                    if tree.nodes[i].status == DEAD:
                        closed.add(i)
                if node.status == DEAD or all(i in closed for i in node.children):
                    return close(node)
            kids = [tree.nodes[i] for i in node.children if i not in closed]
            if not kids:
                return close(node)
            # max UCT; ties go to the earlier child so seeded runs are reproducible
            node = max(kids, key=lambda k: (tree.uct(k, c.c_puct), -k.id))

    return run_loop(s, rollout)
