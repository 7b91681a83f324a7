// spattn::Autotuner and spattn::prewarm: the autotune room's driver with the API's
// heuristic as the baseline (the autotuner sits below the API, so it is passed in).
#include <spattn/autotune.hpp>

#include "api/select.hpp"
#include "autotune/prewarm.hpp"
#include "autotune/tuner.hpp"

namespace spattn {

namespace {

autotune::Selection heuristic_selection(const Pattern& pattern, const engine::Problem& problem,
                                        const runtime::DeviceInfo& device) {
  const api::Choice c = api::heuristic(pattern, problem, device);
  return {c.config, c.source};
}

}  // namespace

Autotuner::Autotuner(AutotuneOptions options) : options_(std::move(options)) {}

std::vector<CandidateReport> Autotuner::candidates(const Pattern& pattern, const TuneProblem& problem) const {
  return autotune::list_candidates(pattern, autotune::to_problem(problem), options_, heuristic_selection);
}

AutotuneReport Autotuner::tune(const Pattern& pattern, const TuneProblem& problem) const {
  return autotune::tune(pattern, autotune::to_problem(problem), options_, heuristic_selection);
}

AutotuneReport Autotuner::compile(const Pattern& pattern, const TuneProblem& problem) const {
  return autotune::compile_candidates(pattern, autotune::to_problem(problem), options_, heuristic_selection);
}

PrewarmReport prewarm(const std::string& manifest_json, const PrewarmOptions& options) {
  return autotune::prewarm(autotune::Manifest::parse(manifest_json), options, heuristic_selection);
}

}  // namespace spattn
