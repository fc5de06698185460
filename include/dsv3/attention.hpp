// dsv3/attention.hpp — kept so that existing #includes still compile: MLA: reference/mla.hpp (the definition, eqs. 1–11) and cpu/mla.hpp (the CPU kernel).
#pragma once

#include "reference/mla.hpp"
#include "cpu/mla.hpp"
