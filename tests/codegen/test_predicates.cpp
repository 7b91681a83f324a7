// The kernel's partial-tile predicate is generated code; it must be the pattern's own
// predicate exactly. The generated functions are compiled here by the host compiler.
#include <gtest/gtest.h>

#include <spattn/pattern.hpp>

#include <random>

#include "generated_predicates.inc"
#include "tests/codegen/predicate_corpus.hpp"

namespace spattn {
namespace {

TEST(GeneratedPredicate, MatchesPatternForEveryBranchOfTheCorpus) {
  int index = 0;
  for (const auto& e : test::kPredicateCorpus) {
    SCOPED_TRACE(e.json);
    const Pattern p = Pattern::parse(e.json);
    const Shape shape{e.nq, e.nk, e.heads};
    p.validate(shape);
    const auto fn = test::generated::kPredicates[index++];
    int64_t allowed = 0, mismatches = 0;
    for (int b = 0; b < p.branch_count(); ++b)
      for (int64_t h = 0; h < e.heads; ++h)
        for (int64_t i = 0; i < e.nq; ++i)
          for (int64_t j = 0; j < e.nk; ++j) {
            const bool want = p.allowed_in_branch(shape, b, h, i, j);
            const bool got = fn(b, h, i, j, e.nq, e.nk, e.heads);
            allowed += want;
            if (want != got && ++mismatches <= 5)
              ADD_FAILURE() << "branch " << b << " h " << h << " i " << i << " j " << j << ": pattern says " << want
                            << ", generated code says " << got;
          }
    EXPECT_EQ(mismatches, 0);
    EXPECT_GT(allowed, 0) << "corpus entry allows nothing: the comparison would be vacuous";
  }
}

// Where the predicate has the per-row range form, the ranges must be exact too; the
// corpus must exercise the form (windows, causal, global columns, hierarchies, heads).
TEST(GeneratedRowBounds, MatchPatternWhereExpressible) {
  int index = 0, with_bounds = 0;
  for (const auto& e : test::kPredicateCorpus) {
    const auto bounds = test::generated::kBounds[index++];
    if (!bounds) continue;
    ++with_bounds;
    SCOPED_TRACE(e.json);
    const Pattern p = Pattern::parse(e.json);
    const Shape shape{e.nq, e.nk, e.heads};
    int64_t mismatches = 0;
    for (int b = 0; b < p.branch_count(); ++b)
      for (int64_t h = 0; h < e.heads; ++h)
        for (int64_t i = 0; i < e.nq; ++i) {
          int lo0, hi0, lo1, hi1;
          bounds(b, h, i, e.nq, e.nk, e.heads, lo0, hi0, lo1, hi1);
          for (int64_t j = 0; j < e.nk; ++j) {
            const bool want = p.allowed_in_branch(shape, b, h, i, j);
            const bool got = (lo0 <= j && j <= hi0) || (lo1 <= j && j <= hi1);
            if (want != got && ++mismatches <= 5)
              ADD_FAILURE() << "branch " << b << " h " << h << " i " << i << " j " << j << ": pattern " << want
                            << ", ranges [" << lo0 << "," << hi0 << "] u [" << lo1 << "," << hi1 << "]";
          }
        }
    EXPECT_EQ(mismatches, 0);
  }
  EXPECT_GE(with_bounds, 8);
}

TEST(GeneratedPredicate, ExclusionListRemovesEarlierPartsPairs) {
  const Pattern window = Pattern::parse(R"({"type":"local_window","window":16})");
  const Pattern strided = Pattern::parse(R"({"type":"strided","stride":8,"mode":"relative"})");
  const Shape shape{200, 200, 1};
  int64_t kept = 0, removed = 0;
  for (int64_t i = 0; i < 200; ++i)
    for (int64_t j = 0; j < 200; ++j) {
      const bool want = window.allowed(shape, 0, i, j) && !strided.allowed(shape, 0, i, j);
      ASSERT_EQ(test::generated::excl::allowed(0, 0, i, j, 200, 200, 1), want) << i << "," << j;
      kept += want;
      removed += window.allowed(shape, 0, i, j) && !want;
    }
  EXPECT_GT(kept, 0);
  EXPECT_GT(removed, 0);
}

}  // namespace
}  // namespace spattn
