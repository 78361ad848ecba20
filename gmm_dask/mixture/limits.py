"""Numeric limits shared by the engine's checks and the input checks above it."""

#: Largest feature magnitude accepted (after the transform, and scaling if any). Squared centred
#: values (<= 4e200), times precisions (<= 1/reg_covar), summed over any realistic number of rows
#: stay finite in float64; beyond it a mean rounded to 1e-16 relative error alone can square to
#: infinity. Behavioural features this large are a unit or encoding mistake. Defined apart from
#: ``validation`` so that the input checks can use it without importing Dask.
MAX_ABS_VALUE = 1e100
