// Accumulation type of each storage type: float for half and bfloat16. Light enough
// for nvcc translation units.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace odecore {

template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<c10::Half> {
  using type = float;
};
template <>
struct AccType<c10::BFloat16> {
  using type = float;
};
template <typename T>
using acc_t = typename AccType<T>::type;

}  // namespace odecore
