// Patterns whose rendered predicates are compiled into the codegen tests by the host
// compiler and compared with Pattern::allowed_in_branch. Each has a problem shape.
#pragma once

namespace spattn::test {

struct CorpusEntry {
  const char* json;
  long long nq, nk, heads;
};

inline constexpr CorpusEntry kPredicateCorpus[] = {
    {R"({"type":"dense"})", 300, 300, 2},
    {R"({"type":"dense","causal":true})", 200, 330, 2},
    {R"({"type":"dense","causal":true})", 330, 200, 2},
    {R"({"type":"local_window","window":64})", 500, 500, 1},
    {R"({"type":"local_window","left":40,"right":0})", 400, 400, 1},
    {R"({"type":"local_window","window":50,"causal":true})", 300, 380, 1},
    {R"({"type":"global_local","global":16,"window":32})", 400, 400, 1},
    {R"({"type":"strided","stride":7,"mode":"relative"})", 300, 300, 1},
    {R"({"type":"strided","stride":9,"mode":"columns","causal":true})", 300, 300, 1},
    {R"({"type":"dilated_sparse","block":16,"rates":[1,2,4],"reach":2})", 512, 512, 1},
    {R"({"type":"hierarchical","levels":[{"stride":16,"window":64,"block":16},{"stride":64,"window":256,"block":32},{"stride":256,"window":-1,"block":64}]})", 700, 700, 1},
    {R"({"type":"neighborhood","grid":[300],"window":[17],"dilation":[3]})", 300, 300, 1},
    {R"({"type":"neighborhood","grid":[12,20],"window":[5,7],"dilation":[1,2]})", 240, 240, 1},
    {R"({"type":"neighborhood","grid":[6,7,8],"window":[3,3,5],"dilation":[2,1,1]})", 336, 336, 1},
    {R"({"type":"custom","block":32,"pairs":[[0,0],[1,0],[1,1],[3,2],[5,0]]})", 200, 200, 1},
    {R"({"type":"butterfly","block":16})", 300, 300, 1},
    {R"({"type":"longnet","segments":[64,128,256],"rates":[1,2,4]})", 600, 600, 6},
    {R"({"type":"longnet","segments":[60,90],"rates":[2,3],"causal":true})", 400, 400, 5},
    {R"({"union":[{"type":"strided","stride":8,"mode":"relative"},{"type":"local_window","window":16}]})", 300, 300, 1},
    {R"({"intersect":[{"type":"local_window","window":64},{"type":"dense","causal":true}]})", 300, 300, 1},
    {R"({"branches":[{"type":"local_window","window":32},{"type":"longnet","segments":[64],"rates":[2]}]})", 300, 300, 4},
    {R"({"heads":[{"first":0,"count":2,"pattern":{"type":"local_window","window":20}},{"first":2,"count":2,"pattern":{"type":"dense","causal":true}}]})", 200, 200, 4},
    // Head-dependent patterns inside head groups see the group's own head numbering.
    {R"({"heads":[{"first":0,"count":3,"pattern":{"type":"local_window","window":16}},{"first":3,"count":4,"pattern":{"type":"longnet","segments":[64,128],"rates":[2,4]}}]})", 300, 300, 7},
    {R"({"heads":[{"first":0,"count":2,"pattern":{"type":"dense","causal":true}},{"first":2,"count":4,"pattern":{"heads":[{"first":0,"count":1,"pattern":{"type":"local_window","window":8}},{"first":1,"count":3,"pattern":{"type":"global_local","global":8,"window":16}}]}}]})", 200, 200, 6},
};

}  // namespace spattn::test
