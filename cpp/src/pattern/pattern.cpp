// Pattern construction, checks against a problem, the element predicate and the dense mask.
#include "spattn/pattern.hpp"

#include <algorithm>
#include <sstream>

#include "spattn/error.hpp"

namespace spattn {

namespace {

int64_t clamp_bound(int64_t x) { return std::min(x, kUnbounded); }

std::string bound_str(int64_t x) { return x >= kUnbounded ? "None" : std::to_string(x); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Pattern Pattern::dense() { return sliding_window(kUnbounded, kUnbounded); }

Pattern Pattern::causal() { return sliding_window(kUnbounded, 0); }

Pattern Pattern::sliding_window(int64_t left, int64_t right) {
  left = clamp_bound(left);
  right = clamp_bound(right);
  if (left < -kUnbounded || right < -kUnbounded || left < -right) {
    std::ostringstream m;
    m << "SlidingWindow: the window -right <= rel <= left is empty for left=" << bound_str(left)
      << ", right=" << bound_str(right) << "; expected left >= -right";
    throw ValueError(m.str());
  }
  Pattern p;
  p.kind_ = Kind::Window;
  p.left_ = left;
  p.right_ = right;
  return p;
}

Pattern Pattern::block_sparse(BlockMask mask) {
  std::ostringstream m;
  if (mask.bq <= 0 || mask.bk <= 0) {
    m << "BlockSparse: block_size must be positive, got (" << mask.bq << ", " << mask.bk << ")";
    throw ValueError(m.str());
  }
  if (mask.heads <= 0 || mask.nbq < 0 || mask.nbk < 0) {
    m << "BlockSparse: layout must be [heads >= 1, query blocks, key blocks], got [" << mask.heads
      << ", " << mask.nbq << ", " << mask.nbk << "]";
    throw ValueError(m.str());
  }
  if (int64_t(mask.bits.size()) != mask.heads * mask.nbq * mask.nbk) {
    m << "BlockSparse: layout holds " << mask.bits.size() << " entries, expected "
      << mask.heads * mask.nbq * mask.nbk;
    throw ValueError(m.str());
  }
  for (auto& b : mask.bits) b = b ? 1 : 0;
  Pattern p;
  p.kind_ = Kind::BlockSparse;
  p.mask_ = std::make_shared<const BlockMask>(std::move(mask));
  return p;
}

int64_t Pattern::heads() const { return kind_ == Kind::BlockSparse ? mask_->heads : 1; }

std::string Pattern::describe() const {
  std::ostringstream s;
  if (kind_ == Kind::Window) {
    if (left_ >= kUnbounded && right_ >= kUnbounded)
      s << "Dense()";
    else if (left_ >= kUnbounded && right_ == 0)
      s << "Causal()";
    else
      s << "SlidingWindow(" << bound_str(left_) << ", " << bound_str(right_) << ")";
  } else {
    s << "BlockSparse(layout=[" << mask_->heads << ", " << mask_->nbq << ", " << mask_->nbk
      << "], block_size=(" << mask_->bq << ", " << mask_->bk << "))";
  }
  return s.str();
}

void Pattern::check(int64_t nq, int64_t nk, int64_t hq) const {
  if (kind_ != Kind::BlockSparse) return;
  const BlockMask& m = *mask_;
  const int64_t want_q = ceil_div(nq, m.bq), want_k = ceil_div(nk, m.bk);
  if (m.nbq != want_q || m.nbk != want_k) {
    std::ostringstream s;
    s << "pattern: BlockSparse layout has " << m.nbq << " x " << m.nbk << " blocks of ("
      << m.bq << ", " << m.bk << "); an Nq=" << nq << " x Nk=" << nk << " problem needs "
      << want_q << " x " << want_k;
    throw ValueError(s.str());
  }
  if (m.heads != 1 && m.heads != hq) {
    std::ostringstream s;
    s << "pattern: BlockSparse layout has " << m.heads << " heads; expected 1 or Hq=" << hq;
    throw ValueError(s.str());
  }
}

Predicate Pattern::predicate(int64_t nq, int64_t nk) const {
  Predicate p;
  p.off = nk - nq;
  if (kind_ == Kind::Window) {
    p.kind = PredicateKind::Window;
    p.left = left_;
    p.right = right_;
  } else {
    p.kind = PredicateKind::BlockMask;
    p.bits = mask_->bits.data();
    p.mask_heads = mask_->heads;
    p.nbq = mask_->nbq;
    p.nbk = mask_->nbk;
    p.bq = mask_->bq;
    p.bk = mask_->bk;
  }
  return p;
}

std::vector<uint8_t> Pattern::mask(int64_t nq, int64_t nk, int64_t heads) const {
  if (nq < 0 || nk < 0 || heads < 1)
    throw ValueError("mask: expected Nq >= 0, Nk >= 0 and heads >= 1, got Nq=" +
                     std::to_string(nq) + ", Nk=" + std::to_string(nk) +
                     ", heads=" + std::to_string(heads));
  check(nq, nk, heads);
  const Predicate pred = predicate(nq, nk);
  std::vector<uint8_t> out(size_t(heads * nq * nk));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < nq; ++i) {
      uint8_t* row = out.data() + (h * nq + i) * nk;
      for (int64_t j = 0; j < nk; ++j) row[j] = keeps(pred, h, i, j) ? 1 : 0;
    }
  return out;
}

}  // namespace spattn
