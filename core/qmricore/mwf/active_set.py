"""Non-negative least squares for a batch of small problems at once: Lawson–Hanson on the normal equations.

For each problem ``b`` of a batch, :func:`nnls_gram` finds ``x_b >= 0`` minimising ``|A_b x - y_b|²``, given only
the Gram matrix ``G_b = A_bᵀ A_b`` and ``c_b = A_bᵀ y_b`` (Bro & de Jong's "fast NNLS" form of Lawson–Hanson's
active-set method).  A Tikhonov term ``mu² |x|²`` is ``G + mu² I``.  The problems advance in lock-step, one
column added or a step back towards feasibility per round; each round solves every problem's system restricted
to its passive (positive) set as one batched ``numpy.linalg.solve`` on the passive columns gathered to the
front.  The answer is the exact NNLS solution (the method is finite and stops at the KKT point), so a warm
start only saves rounds: ``passive`` may start from the passive set of a neighbouring problem (the previous
Tikhonov weight, a nearby refocusing angle), which typically leaves one to three rounds instead of one per
positive entry.

For the problems of :mod:`qmricore.mwf.nnls` (32 echoes x 40 bins) this is several times faster per problem than
calling :func:`scipy.optimize.nnls` problem by problem, and agrees with it to ~1e-9 (the normal equations square
the condition number of the passive columns; the tests compare both on random and on CPMG problems).
"""

from __future__ import annotations

import numpy as np

#: Relative size of a dual (gradient) entry below which it counts as zero.
DUAL_TOLERANCE = 1e-12


def _passive_first(passive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column indices ``(B, k)``: each problem's passive columns in index order, then padding (0), and a mask of
    the passive ones."""
    count = passive.sum(axis=1)
    k = max(int(count.max()), 1)
    order = np.zeros((len(passive), k), np.intp)
    rows, columns = np.nonzero(passive)
    order[rows, (np.cumsum(passive, axis=1) - 1)[rows, columns]] = columns
    return order, np.arange(k) < count[:, None]


class _Grams:
    """The batch's Gram matrices: ``gram[which[b]] + ridge[b] I`` for problem ``b``, never copied per problem.

    ``gram`` is one ``(n, n)`` matrix, a few ``(m, n, n)`` shared by groups of problems (``which`` says whose),
    or one per problem.
    """

    def __init__(self, gram: np.ndarray, batch: int, which: np.ndarray | None, ridge: np.ndarray | None) -> None:
        gram = np.ascontiguousarray(gram, dtype=np.float64)
        self.gram = gram[None] if gram.ndim == 2 else gram
        self.n = self.gram.shape[-1]
        if which is None:
            which = np.zeros(batch, np.intp) if len(self.gram) == 1 else np.arange(batch)
        self.which = np.asarray(which, np.intp)
        self.ridge = np.zeros(batch) if ridge is None else np.asarray(ridge, np.float64)
        self.flat = self.gram.reshape(-1)

    def diagonal(self) -> np.ndarray:
        return np.diagonal(self.gram, axis1=1, axis2=2)[self.which] + self.ridge[:, None]

    def block(self, rows: np.ndarray, order: np.ndarray) -> np.ndarray:
        """``G_b[order_b, order_b]`` for problems ``rows``: ``(B, k, k)``."""
        index = order[:, :, None] * self.n + order[:, None, :] + (self.which[rows] * (self.n * self.n))[:, None, None]
        block = self.flat.take(index)
        k = order.shape[1]
        block.reshape(len(rows), k * k)[:, ::k + 1] += self.ridge[rows, None]
        return block

    def times(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``G_b x_b`` for problems ``rows`` (``x`` their vectors)."""
        out = self.ridge[rows, None] * x
        which = self.which[rows]
        if len(self.gram) <= 64:  # a few shared matrices: one product per matrix
            if len(self.gram) == 1:
                return out + x @ self.gram[0]  # symmetric
            for g in np.unique(which):
                sel = which == g
                out[sel] += x[sel] @ self.gram[g]
            return out
        if 4 * len(rows) > len(self.gram):  # most of one per problem: the product for all, not a copy of most
            full = np.zeros((len(self.gram), self.n))
            full[which] = x
            return out + np.einsum("bij,bj->bi", self.gram, full)[which]
        return out + np.einsum("bij,bj->bi", self.gram[which], x)


def _solve_passive(grams: _Grams, rows: np.ndarray, rhs: np.ndarray, passive: np.ndarray) -> np.ndarray:
    """``z`` with ``G[P, P] z[P] = c[P]`` and ``z[~P] = 0`` for problems ``rows`` (``rhs`` their ``c``, ``passive``
    their ``P``).  Each system is padded to the largest passive set; with many problems whose sets differ in
    size, the smaller and the larger sets are solved apart (the cost grows with the cube of the padded size)."""
    count = passive.sum(axis=1)
    if len(rows) >= 256 and int(count.max()) - int(count.min()) > 6:
        z = np.empty(rhs.shape)
        small = count <= (int(count.min()) + int(count.max())) // 2  # both halves non-empty
        for part in (small, ~small):
            z[part] = _solve_passive(grams, rows[part], rhs[part], passive[part])
        return z
    order, valid = _passive_first(passive)
    k = order.shape[1]
    system = grams.block(rows, order)
    system = np.where(valid[:, :, None] & valid[:, None, :], system, np.eye(k))  # padding: identity rows
    right = np.where(valid, np.take_along_axis(rhs, order, axis=1), 0.0)
    try:
        solved = np.linalg.solve(system, right[..., None])[..., 0]
    except np.linalg.LinAlgError:  # an exactly singular passive set: a ridge at rounding level
        ridge = 1e-14 * np.abs(np.diagonal(system, axis1=1, axis2=2)).max(axis=1)
        solved = np.linalg.solve(system + ridge[:, None, None] * np.eye(k), right[..., None])[..., 0]
    z = np.zeros(rhs.shape)
    problem, _ = np.nonzero(valid)
    z[problem, order[valid]] = solved[valid]
    return z


def _one_by_one(grams: _Grams, rows: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """The last resort: :func:`scipy.optimize.nnls` per problem on ``B x ≈ d`` with ``BᵀB = G``, ``Bᵀd = c``
    (``B = Λ^½ Vᵀ`` from ``G = V Λ Vᵀ``, over the eigenvalues above rounding)."""
    from scipy.optimize import nnls

    out = np.zeros((len(rows), grams.n))
    for j, b in enumerate(rows):
        values, vectors = np.linalg.eigh(grams.gram[grams.which[b]] + grams.ridge[b] * np.eye(grams.n))
        keep = values > 1e-13 * values.max()
        root = np.sqrt(values[keep])
        out[j] = nnls(root[:, None] * vectors[:, keep].T, (vectors[:, keep].T @ rhs[j]) / root,
                      maxiter=50 * grams.n)[0]
    return out


def nnls_gram(gram: np.ndarray, rhs: np.ndarray, passive: np.ndarray | None = None, *,
              which: np.ndarray | None = None, ridge: np.ndarray | None = None,
              max_rounds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``min_{x >= 0} x·G x / 2 - c·x`` for a batch (see the module docstring).

    Parameters
    ----------
    gram
        Gram matrices (symmetric, positive semi-definite): one ``(n, n)`` for all problems, one per problem
        ``(B, n, n)``, or ``(m, n, n)`` with ``which``.
    which
        ``(B,)`` index into ``gram`` per problem (with ``(m, n, n)`` matrices shared by groups of problems).
    ridge
        ``(B,)`` added to each problem's diagonal: a Tikhonov term ``mu² |x|²`` without copying ``gram``.
    rhs
        ``c = Aᵀ y``, shape ``(B, n)``.
    passive
        Optional warm start: boolean ``(B, n)``, the columns expected positive (any guess is safe).
    max_rounds
        Rounds (default ``7 n``) after which the problems left are solved one by one with
        :func:`scipy.optimize.nnls` on a square root of their Gram matrix.

    Returns
    -------
    x, passive
        The solutions ``(B, n)`` and their positive sets (to warm-start the next, similar batch).
    """
    rhs = np.asarray(rhs, dtype=np.float64)
    batch, n = rhs.shape
    grams = _Grams(np.asarray(gram), batch, which, ridge)
    positive = np.zeros((batch, n), bool) if passive is None else np.array(passive, dtype=bool)
    x = np.zeros((batch, n))
    scale = np.abs(rhs).max(axis=1) + np.abs(grams.diagonal()).max(axis=1)
    tolerance = DUAL_TOLERANCE * np.where(scale > 0, scale, 1.0)
    # Each live problem is either "adding" (x is optimal on its passive set: look for a column to add) or
    # "stepping" (its passive set changed: solve on it and, where that is infeasible, step back towards x).
    stepping = positive.any(axis=1)
    warm = stepping.copy()  # x is not yet a feasible point of the warm start's passive set
    blocked = np.zeros((batch, n), bool)  # columns that came back non-positive right after being added
    added = np.full(batch, -1)
    work = np.arange(batch)  # the live problems
    limit = 7 * n if max_rounds is None else max_rounds
    for _ in range(limit):
        # adding: the largest positive dual entry among the zero columns enters; none left means KKT holds
        adding = work[~stepping[work]]
        if len(adding):
            dual = rhs[adding] - grams.times(adding, x[adding])
            dual = np.where(positive[adding] | blocked[adding], -np.inf, dual)
            best = np.argmax(dual, axis=1)
            grows = dual[np.arange(len(adding)), best] > tolerance[adding]
            grow = adding[grows]
            positive[grow, best[grows]] = True
            added[grow] = best[grows]
            stepping[grow] = True
            work = work[stepping[work]]
        if not len(work):
            return x, positive
        # stepping: the least-squares solution on the passive set
        pos = positive[work]
        z = _solve_passive(grams, work, rhs[work], pos)
        new = added[work]
        rows = np.arange(len(work))
        # a column just added that is not positive in z cannot enter (rounding): take it out and block it
        refused = (new >= 0) & (z[rows, np.maximum(new, 0)] <= 0)
        if refused.any():
            r = work[refused]
            positive[r, new[refused]] = False
            blocked[r, new[refused]] = True
            stepping[r] = False
        added[work] = -1
        feasible = ~refused & np.all(~pos | (z > 0), axis=1)
        done = work[feasible]
        x[done] = z[feasible]
        stepping[done] = False
        blocked[done] = False  # a completed step changes the duals: every column may enter again
        warm[done] = False
        back = ~refused & ~feasible
        cold = back & warm[work]  # a warm start: drop its non-positive columns (x = 0 gives no step to take)
        if cold.any():
            r = work[cold]
            positive[r] = pos[cold] & (z[cold] > 0)
            back &= ~cold
        if back.any():
            r = work[back]
            xb, zb, pb = x[r], z[back], pos[back]
            shrink = pb & (zb <= 0)
            ratio = np.where(shrink, xb / np.where(shrink, xb - zb, 1.0), np.inf)
            alpha = ratio.min(axis=1)[:, None]
            xb = xb + alpha * (zb - xb)
            leave = pb & ((xb <= 0) | (shrink & (ratio <= alpha)))
            x[r] = np.where(pb & ~leave, xb, 0.0)
            positive[r] = pb & ~leave
    x[work] = _one_by_one(grams, work, rhs[work])  # rounding made it cycle (not seen on CPMG problems)
    positive[work] = x[work] > 0
    return x, positive


def nnls_gram_definite(gram: np.ndarray, rhs: np.ndarray, passive: np.ndarray | None = None, *,
                       which: np.ndarray | None = None, ridge: np.ndarray | None = None,
                       max_rounds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nnls_gram` for positive definite Gram matrices (a Tikhonov term ``mu² I``, ``mu > 0``), by block
    principal pivoting (Júdice & Pires 1994; Kim & Park 2011): every infeasible entry changes side at once, with
    the single-exchange backup rule after three rounds that did not reduce their number, so it ends in a few
    rounds instead of one per positive entry.  Same arguments and result as :func:`nnls_gram`; the solution
    of a positive definite problem is unique, so both give it (to rounding)."""
    rhs = np.asarray(rhs, dtype=np.float64)
    batch, n = rhs.shape
    grams = _Grams(np.asarray(gram), batch, which, ridge)
    free = np.zeros((batch, n), bool) if passive is None else np.array(passive, dtype=bool)
    x = np.zeros((batch, n))
    scale = np.abs(rhs).max(axis=1) + np.abs(grams.diagonal()).max(axis=1)
    tolerance = DUAL_TOLERANCE * np.where(scale > 0, scale, 1.0)
    fewest = np.full(batch, n + 1)  # the fewest infeasible entries seen
    chances = np.full(batch, 3)  # full exchanges left without progress
    work = np.arange(batch)
    limit = n if max_rounds is None else max_rounds
    for _ in range(limit):
        f = free[work]
        z = _solve_passive(grams, work, rhs[work], f)
        gradient = grams.times(work, z) - rhs[work]
        bad = (f & (z < 0)) | (~f & (gradient < -tolerance[work][:, None]))
        count = bad.sum(axis=1)
        ok = count == 0
        x[work[ok]] = np.where(f[ok], z[ok], 0.0)
        rest = ~ok
        if not rest.any():
            return x, free
        r, bad, count = work[rest], bad[rest], count[rest]
        better = count < fewest[r]
        fewest[r] = np.where(better, count, fewest[r])
        chances[r] = np.where(better, 3, chances[r] - 1)
        full = chances[r] >= 0
        last = n - 1 - np.argmax(bad[:, ::-1], axis=1)  # backup rule: only the largest infeasible index
        single = np.zeros_like(bad)
        single[np.arange(len(r)), last] = True
        free[r] = free[r] ^ np.where(full[:, None], bad, single)
        work = r
    # rounding can make the exchanges cycle when mu is tiny (G nearly singular): Lawson–Hanson from here
    x[work], free[work] = nnls_gram(grams.gram, rhs[work], free[work], which=grams.which[work],
                                    ridge=grams.ridge[work])
    return x, free
