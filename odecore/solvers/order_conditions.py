"""Runge-Kutta order conditions from rooted trees.

A Runge-Kutta method (A, b, c) has order p iff for every rooted tree t with at most p
vertices its elementary weight equals the inverse of the tree's density:
``sum_i b_i Phi_i(t) = 1 / gamma(t)`` (Butcher 1963; Hairer, Norsett & Wanner, "Solving
Ordinary Differential Equations I", section II.2, Theorem 2.13). Here

* a tree is the sorted tuple of its root's subtrees, so ``()`` is the single vertex and
  the form is canonical: equal tuples are isomorphic trees;
* ``gamma(t) = |t| * prod(gamma(u) for u in subtrees)``;
* ``Phi_i(t) = prod(sum_j a_ij Phi_j(u) for u in subtrees)``, where a subtree that is a
  single vertex contributes ``c_i`` (the method's own nodes, so a wrong node fails the
  conditions even when ``A`` is right) -- and ``c_i = sum_j a_ij`` is checked on its own.

Order 1: sum b = 1; order 2: b.c = 1/2; order 3: b.c^2 = 1/3, b.A.c = 1/6; ... there are
1, 1, 2, 4, 9, 20, 48, 115 trees of orders 1..8 (OEIS A000081). Works for explicit and
implicit tableaus (``a`` as full s x s rows or, for explicit ones, row i holding i entries)
in floats or exact ``fractions.Fraction``.
"""

import math
from fractions import Fraction
from functools import cache

__all__ = ["rooted_trees", "tree_order", "tree_density", "order_residuals", "check_order", "tableau_order"]


def _canonical(children):
    return tuple(sorted(children))


def _grow(tree):
    """Every tree made from `tree` by hanging one new vertex from one of its vertices."""
    yield _canonical(tree + ((),))
    for i, child in enumerate(tree):
        for grown in _grow(child):
            yield _canonical(tree[:i] + (grown,) + tree[i + 1 :])


@cache
def rooted_trees(order):
    """The rooted trees with `order` vertices (canonical nested tuples), sorted."""
    if order < 1:
        raise ValueError("a rooted tree has at least one vertex, got order %r" % (order,))
    if order == 1:
        return ((),)
    return tuple(sorted({grown for tree in rooted_trees(order - 1) for grown in _grow(tree)}))


def tree_order(tree):
    return 1 + sum(tree_order(u) for u in tree)


def tree_density(tree):
    return tree_order(tree) * math.prod(tree_density(u) for u in tree)


def _full(a, s):
    rows = [list(row) + [0] * (s - len(row)) for row in a]
    if len(rows) != s or any(len(row) != s for row in rows):
        raise ValueError("a must have %d rows of at most %d entries" % (s, s))
    return rows


def _weights(tree, a, c, cache):
    """Phi_i(tree) for every stage i."""
    if tree in cache:
        return cache[tree]
    s = len(c)
    phi = [1] * s
    for u in tree:
        if u == ():
            inner = c
        else:
            pu = _weights(u, a, c, cache)
            inner = [sum(a[i][j] * pu[j] for j in range(s)) for i in range(s)]
        phi = [p * q for p, q in zip(phi, inner)]
    cache[tree] = phi
    return phi


def _exact(values):
    return all(not isinstance(v, float) for v in values)


def order_residuals(a, b, c, order):
    """[(tree, b.Phi(tree) - 1/gamma(tree), magnitude)] for every tree of 1..`order` vertices,
    after ("row sums", max_i |sum_j a_ij - c_i|, max_i sum_j |a_ij|); `magnitude` is the
    same sum with |b|, |A| and |c| (the size of the terms, the scale of rounding errors)."""
    s = len(b)
    if len(c) != s:
        raise ValueError("b and c must have the same length, got %d and %d" % (s, len(c)))
    a = _full(a, s)
    abs_a = [[abs(v) for v in row] for row in a]
    abs_c = [abs(v) for v in c]
    out = [("row sums", max(abs(sum(row) - ci) for row, ci in zip(a, c)), max(sum(row) for row in abs_a))]
    exact = _exact(list(b) + list(c) + [x for row in a for x in row])
    cache, abs_cache = {}, {}
    for p in range(1, order + 1):
        for tree in rooted_trees(p):
            value = sum(bi * pi for bi, pi in zip(b, _weights(tree, a, c, cache)))
            magnitude = sum(abs(bi) * pi for bi, pi in zip(b, _weights(tree, abs_a, abs_c, abs_cache)))
            gamma = tree_density(tree)
            out.append((tree, value - (Fraction(1, gamma) if exact else 1.0 / gamma), magnitude))
    return out


def check_order(a, b, c, order, tol=1e-14):
    """The conditions of trees with up to `order` vertices (and c = row sums of a) that fail:
    [(tree or 'row sums', residual)]. A float residual fails when it exceeds `tol` times
    the size of its terms (at least 1); exact (Fraction) ones must vanish."""
    return [(tree, r) for tree, r, magnitude in order_residuals(a, b, c, order) if abs(r) > tol * max(1, magnitude)]


def tableau_order(a, b, c, max_order=8, tol=1e-14):
    """The largest p <= max_order for which every condition up to order p holds (0 when even
    the row sums or sum b = 1 fail)."""
    for p in range(0, max_order + 1):
        if check_order(a, b, c, p, tol):
            return max(p - 1, 0)
    return max_order
