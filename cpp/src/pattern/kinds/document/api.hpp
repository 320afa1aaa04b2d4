#include <cstdint>
#include <vector>

namespace spattn {
// Document(cu_seqlens): attention only within a document of one packed sequence. cu_seqlens
// are the documents' key offsets [0, n_0, n_0 + n_1, ..., total] (first 0, non-decreasing; a
// repeated offset is an empty document); the pattern fits problems with Nk == total. Query i
// sits at key position p = i + Nk - Nq (bottom-right, as everywhere) and sees key j when p and
// j lie in the same document; a query with p < 0 (Nq > Nk) sees nothing. ValueError for a
// malformed cu_seqlens, and (check / compile) for Nk != total.
Pattern document(std::vector<int64_t> cu_seqlens);
}  // namespace spattn
