from medmm.io.table import Table, read_gene_groups, read_table  # noqa: E402,F401
from medmm.io.wsi import FeatureBag, WholeSlide, feature_bag, read_wsi  # noqa: E402,F401
