#include <cstdint>

namespace spattn {
// LogSparse(local=0): key j is kept when rel = i + Nk - Nq - j >= 0 and rel <= local or rel is
// a power of two (LogSparse Transformer: each query sees its last `local` keys, itself, and
// keys at exponentially growing distances 1, 2, 4, 8, ...). local >= 0 (ValueError otherwise).
Pattern log_sparse(int64_t local = 0);
}  // namespace spattn
